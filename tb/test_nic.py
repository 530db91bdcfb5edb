"""cocotb tests of the NIC: short stories on top of the TB class. Collected by tests/test_sim.py."""

import cocotb

from tb.nic_tb import TB


@cocotb.test()
async def smoke(dut):
    tb = TB(dut)
    await tb.init()
    assert await tb.read_reg("REG_ID") == tb.regs.NIC_ID_VALUE
    frame = bytes(range(256)) * 2
    await tb.driver.xmit(frame)
    out = await tb.recv_frame()
    assert out == frame
    await tb.send_frame(frame[:100])
    got = await tb.driver.recv()
    assert got == frame[:100]
    tb.close()
