"""Host side of the NIC: register map (from rtl/), the driver over an abstract PCIe access object, telemetry."""
