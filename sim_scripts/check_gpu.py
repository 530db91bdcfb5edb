"""make check-gpu: exercise the real NVML path (nvidia-ml-py) and print what it read; exit 1 if NVML is unusable.

Run on a machine with an NVIDIA GPU and driver. It opens every device, reads utilisation, memory and PCIe
throughput twice (a second apart) under a short load if one can be made without extra packages, and prints it.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    from host.telemetry import TelemetryError
    from host.telemetry.nvml import NvmlSource

    try:
        src = NvmlSource()
    except TelemetryError as e:
        print(f"NVML unusable: {e}", file=sys.stderr)
        return 1
    try:
        for d in src.describe():
            link = d["link_bytes_per_s"]
            print(f"gpu{d['index']}: {d['name']}, PCIe link {link / 1e9:.1f} GB/s per direction" if link else
                  f"gpu{d['index']}: {d['name']}, PCIe link unknown")
        for i in range(2):
            time.sleep(1.0)
            s = src.read()
            for d in s.devices:
                print(f"read {i}: {d.device} util {d.gpu_util:.2f} mem {d.mem_used_bytes / 2**30:.2f}/"
                      f"{d.mem_total_bytes / 2**30:.2f} GiB PCIe tx {d.pcie_tx_bps / 1e6:.1f} MB/s "
                      f"rx {d.pcie_rx_bps / 1e6:.1f} MB/s link util {d.pcie_util if d.pcie_util is not None else 'n/a'}")
            if not s.devices or any(d.mem_total_bytes <= 0 for d in s.devices):
                print("NVML answered but reported no memory: unusable", file=sys.stderr)
                return 1
    except TelemetryError as e:
        print(f"NVML read failed: {e}", file=sys.stderr)
        return 1
    finally:
        src.close()
    print("NVML path OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
