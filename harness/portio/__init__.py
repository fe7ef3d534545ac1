"""Port I/O observation: two monitors and a scoreboard.

access.py   the PortAccess event, the PIIX3 port map, the Recorder interface both monitors share
watch.py    driver side: GDB breakpoints on the kernel's in/out (gdb_agent.py runs inside GDB)
devtrace.py device side: QEMU's own ide_*/bmdma_* trace events
compare.py  the two records normalized and side by side
protocol.py the ATA/PIIX3 protocol checker over either record
"""

from harness.portio.access import PortAccess, PortError, PortMap
from harness.portio.compare import Comparison, compare, diff_text, normalize

__all__ = ["Comparison", "PortAccess", "PortError", "PortMap", "compare", "diff_text", "normalize"]
