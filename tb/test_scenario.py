"""cocotb entry for named scenarios: drive traffic both ways through the driver and the MAC, score every frame."""

import os

import cocotb
from cocotb.triggers import Combine, First, Timer
from cocotb.utils import get_sim_time
from tqdm import tqdm

from host.driver import DriverConfig
from tb.nic_tb import TB, LinkConfig
from tb.scenarios import get_scenario


@cocotb.test()
async def run_scenario(dut):
    sc = get_scenario(os.environ.get("NIC_SCENARIO", "mixed"))
    frames = int(os.environ["NIC_FRAMES"]) if os.environ.get("NIC_FRAMES") else None
    link = LinkConfig(mps=int(os.environ.get("NIC_MPS", sc.mps)), mrrs=int(os.environ.get("NIC_MRRS", sc.mrrs)),
                      rcb=int(os.environ.get("NIC_RCB", sc.rcb)), host=os.environ.get("NIC_HOST", sc.host),
                      packet_payload_keep=int(os.environ.get("NIC_PAYLOAD_KEEP", 64)))
    tb = TB(dut, link, trace_path=os.environ.get("NIC_TRACE") or None, scenario=sc.name)
    await tb.init(DriverConfig(irq_coalesce_count=sc.irq_coalesce_count, irq_coalesce_timer=sc.irq_coalesce_timer))
    tx, rx = sc.plan(int(os.environ.get("NIC_SEED", 1)), frames)
    bar = tqdm(total=len(tx) + len(rx), desc=f"scenario {sc.name}", unit="frame", mininterval=2.0,
               disable=os.environ.get("NIC_PROGRESS", "1") != "1")

    done = [0]   # frames scored (the progress bar may be disabled)

    async def host_tx():
        for i in range(0, len(tx), sc.batch):
            await tb.driver.xmit_batch(tx[i:i + sc.batch])
        await tb.driver.wait_tx_done()

    async def wire_tx():
        for i, want in enumerate(tx):
            got = await tb.recv_frame()
            assert got == want, f"TX frame {i}: {len(got)} bytes on the wire, expected {len(want)} (or data differs)"
            done[0] += 1
            bar.update(1)

    async def wire_rx():
        for f in rx:
            await tb.send_frame(f)

    async def host_rx():
        for i, want in enumerate(rx):
            got = await tb.driver.recv()
            assert got == want, f"RX frame {i}: host got {len(got)} bytes, expected {len(want)} (or data differs)"
            done[0] += 1
            bar.update(1)

    # a device that stops moving frames ends the run with what was left, never a hang: no frame done for
    # NIC_STALL_US of simulated time (default 2 ms: twice the device's default completion timeout), or the whole
    # run past NIC_SIM_LIMIT_US
    limit_us = float(os.environ.get("NIC_SIM_LIMIT_US", 50_000))
    stall_us = float(os.environ.get("NIC_STALL_US", 2_000))
    jobs = [cocotb.start_soon(c()) for c in (host_tx, wire_tx, wire_rx, host_rx)]

    async def watchdog() -> str:
        last, t_last = -1, 0.0
        while True:
            await Timer(50, "us")
            now = get_sim_time("us")
            if done[0] != last:
                last, t_last = done[0], now
            elif now - t_last > stall_us:
                return f"no frame done for {now - t_last:.0f} us"
            if now > limit_us:
                return f"still running after {limit_us:.0f} us of simulated time"

    dog = cocotb.start_soon(watchdog())
    await First(Combine(*jobs), dog)
    if dog.done():
        for j in jobs:
            j.cancel()
        raise AssertionError(f"scenario {sc.name}: frames stopped moving: {dog.result()} ({done[0]} of "
                             f"{len(tx) + len(rx)} frames done)")
    dog.cancel()
    bar.close()
    stats = await tb.driver.stats()
    assert stats["tx_pkts"] == len(tx) and stats["rx_pkts"] == len(rx), stats
    assert stats["dma_errors"] == 0 and stats["cpl_timeouts"] == 0, stats
    tb.close()
    dut._log.warning("scenario %s: %d TX + %d RX frames, %d TLPs, %d interrupts",
                     sc.name, len(tx), len(rx), tb.tracer.seq, tb.access.irq_count)
