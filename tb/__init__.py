"""cocotb testbenches for the NIC: the TB class, the simulated PCIe access, TLP capture, tests, replay."""
