"""GDB-side half of port watching: runs inside GDB (`source harness/portio/gdb_agent.py`).

It disassembles every executable section of the kernel with GDB's own disassembler, finds each
in/out/ins/outs instruction, and while a watcher is active keeps a Python breakpoint on them
whose stop() records the access and returns False (GDB continues by itself). The value an `in`
read is known only after the instruction, so its next instruction gets a breakpoint too. A
`rep ins/outs` is entered through the `cld` in front of it (x86.h writes "cld; rep insl"): a
breakpoint on the rep itself fires once per iteration, since QEMU re-enters the instruction for
each one (a rep with no cld before it is caught at itself, and its later iterations are known as
such until the instruction after it is reached).

QEMU (7.2, TCG) now and then answers the single step with which GDB leaves a breakpoint
without executing the instruction (seen here about once in a few hundred steps under load,
more often while interrupts come in); GDB, still at the breakpoint, reports it hit again. An
`in` is recorded at the instruction after it, so a repeated entry costs nothing. An `out` (and
a `rep outs` entered at its cld) is recorded at its entry, so its next instruction gets a
breakpoint too: an entry hit twice with no other breakpoint between is that lost step, not a
second access. The harness talks to it with `piix3-ports ACTION HEXJSON` and reads one
`piix3-ports-reply: JSON` line from the console; the host half is watch.py.

Nothing here imports the rest of the harness: GDB's Python is the system's, not the venv's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import gdb  # type: ignore[import-untyped]

    IN_GDB = True
except ImportError:  # imported by unit tests for the pure parts below
    IN_GDB = False

REPLY_PREFIX = "piix3-ports-reply: "
COMMAND = "piix3-ports"
DATA_CAPTURE_LIMIT = 1 << 20  # bytes of string transfers a watcher keeps, in total
EFLAGS_DF = 1 << 10
_REG_WIDTH = {"al": 1, "ax": 2, "eax": 4}
_SUFFIX_WIDTH = {"b": 1, "w": 2, "l": 4, "d": 4}
_PREFIXES = {"rep", "repz", "repe", "repnz", "repne", "data16", "addr16", "data32", "addr32", "lock"}
_PORT_IMM = re.compile(r"^\$(0x[0-9a-fA-F]+|\d+)$")


@dataclass(frozen=True)
class Site:
    """One port-I/O instruction in the kernel image."""

    addr: int
    length: int
    direction: str  # "in" | "out"
    width: int  # bytes per transfer
    port: int | None  # the imm8 port, or None when the port is in dx
    string: bool  # ins/outs: memory <-> port
    rep: bool
    entry: int  # where the access is caught: the instruction itself, or the cld before a rep
    df_known: bool = False  # entered through cld: the direction flag is clear

    @property
    def after(self) -> int:
        return self.addr + self.length

    @property
    def reentered(self) -> bool:
        """A rep string instruction caught at itself (no cld in front): QEMU runs it one
        iteration at a time, so its breakpoint fires once per iteration."""
        return self.rep and self.entry == self.addr

    def to_json(self) -> dict[str, Any]:
        return {
            "addr": self.addr,
            "length": self.length,
            "direction": self.direction,
            "width": self.width,
            "port": self.port,
            "string": self.string,
            "rep": self.rep,
            "entry": self.entry,
        }


def classify(addr: int, length: int, asm: str) -> Site | None:
    """A Site if `asm` (GDB/objdump AT&T text) is a port-I/O instruction, else None."""
    tokens = asm.split(None, 1)
    if not tokens:
        return None
    mnemonic, rest = tokens[0], tokens[1] if len(tokens) > 1 else ""
    prefixes = []
    while mnemonic in _PREFIXES:
        prefixes.append(mnemonic)
        tokens = rest.split(None, 1)
        if not tokens:
            return None
        mnemonic, rest = tokens[0], tokens[1] if len(tokens) > 1 else ""
    rep = any(p.startswith("rep") for p in prefixes)
    operands = [o.strip() for o in rest.split("#")[0].split(",")] if rest.strip() else []
    base = mnemonic
    suffix_width = None
    if base in ("inb", "inw", "inl", "outb", "outw", "outl"):
        base, suffix_width = base[:-1], _SUFFIX_WIDTH[base[-1]]
    if base in ("in", "out"):
        if len(operands) != 2:
            return None
        port_op, reg_op = (operands[0], operands[1]) if base == "in" else (operands[1], operands[0])
        width = _REG_WIDTH.get(reg_op.lstrip("%"), suffix_width)
        if width is None:
            return None
        imm = _PORT_IMM.match(port_op)
        if imm:
            port: int | None = int(imm.group(1), 0)
        elif port_op == "(%dx)":
            port = None
        else:
            return None
        return Site(addr, length, base, width, port, string=False, rep=False, entry=addr)
    for stem, direction in (("ins", "in"), ("outs", "out")):
        if base.startswith(stem) and base[len(stem) :] in _SUFFIX_WIDTH:
            width = _SUFFIX_WIDTH[base[len(stem) :]]
            return Site(addr, length, direction, width, None, string=True, rep=rep, entry=addr)
    return None


def find_sites(instructions: Sequence[tuple[int, int, str]]) -> list[Site]:
    """Port-I/O sites among (addr, length, asm) in address order; a rep string instruction
    right after a `cld` is entered at the cld."""
    sites = []
    for i, (addr, length, asm) in enumerate(instructions):
        site = classify(addr, length, asm)
        if site is None:
            continue
        if site.rep and i > 0:
            prev_addr, prev_len, prev_asm = instructions[i - 1]
            if prev_asm.split()[:1] == ["cld"] and prev_addr + prev_len == addr:
                site = Site(**{**site.__dict__, "entry": prev_addr, "df_known": True})
        sites.append(site)
    return sites


def _elf_headers(data: bytes, path: object) -> tuple[list[tuple[int, ...]], int]:
    """The section headers (Elf32_Shdr fields) of a 32-bit little-endian ELF image, and the
    offset of the section-name string table. The harness's one ELF reader: it lives here
    because this module must stand alone inside GDB."""
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise ValueError(f"{path} is not a 32-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
    headers = [struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize) for i in range(shnum)]
    return headers, headers[shstrndx][4]


def elf_sections(path: str | os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """Section name -> (address, size) of a 32-bit ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    headers, strtab_off = _elf_headers(data, path)
    out = {}
    for name_off, *_, addr, _off, size, _link, _info, _align, _entsize in headers:
        name = data[strtab_off + name_off : data.index(b"\0", strtab_off + name_off)].decode()
        if name:
            out[name] = (addr, size)
    return out


def exec_sections(path: str) -> list[tuple[str, int, int, list[int]]]:
    """(name, address, size, symbol addresses) of every allocated executable section of a
    32-bit ELF file. Disassembly restarts at each symbol, as objdump's does: data in a code
    section (the multiboot header) must not swallow the first instruction after it."""
    with open(path, "rb") as f:
        data = f.read()
    headers, strtab_off = _elf_headers(data, path)
    shnum = len(headers)
    symbols: dict[int, list[int]] = {}
    for sh_type, offset, size, entsize in ((h[1], h[4], h[5], h[9]) for h in headers):
        if sh_type != 2 or not entsize:  # SHT_SYMTAB
            continue
        for k in range(size // entsize):
            value, info, shndx = struct.unpack_from("<4xI4xBxH", data, offset + k * entsize)
            if info & 0xF not in (3, 4) and 0 < shndx < shnum:  # not SECTION or FILE
                symbols.setdefault(shndx, []).append(value)
    out = []
    for index, (name_off, sh_type, flags, addr, _off, size, *_) in enumerate(headers):
        if sh_type == 1 and flags & 0x2 and flags & 0x4 and size:  # PROGBITS, ALLOC, EXECINSTR
            end = data.index(b"\0", strtab_off + name_off)
            starts = sorted({v for v in symbols.get(index, []) if addr <= v < addr + size})
            out.append((data[strtab_off + name_off : end].decode(), addr, size, starts))
    return out


@contextlib.contextmanager
def _code_from_file() -> Iterator[None]:
    """Read-only sections (the code) from the ELF file instead of over the remote link."""
    trust = gdb.parameter("trust-readonly-sections")
    gdb.execute("set trust-readonly-sections on", to_string=True)
    try:
        yield
    finally:
        gdb.execute(f"set trust-readonly-sections {'on' if trust else 'off'}", to_string=True)


@dataclass
class Watcher:
    """What one harness watch (or port breakpoint) wants, and what it has seen."""

    ident: int
    ranges: list[tuple[int, int]]  # inclusive port ranges
    direction: str | None = None
    value: int | None = None
    stop: bool = False  # a port breakpoint: stop the guest on a match
    capture: int = DATA_CAPTURE_LIMIT  # bytes of string-transfer data still to keep
    events: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0

    def wants_port(self, port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in self.ranges)

    def matches(self, ev: dict[str, Any]) -> bool:
        if not self.wants_port(ev["port"]):
            return False
        if self.direction is not None and ev["direction"] != self.direction:
            return False
        return self.value is None or ev["value"] == self.value


@dataclass
class _Pending:
    """An `in`/`ins` caught before it ran; completed at the instruction after it."""

    site: Site
    port: int
    count: int
    buffer: int | None
    backwards: bool
    where: dict[str, Any]


class Agent:
    """The watchers, the breakpoints they need, and the hit logic."""

    def __init__(self) -> None:
        self.sites: list[Site] | None = None
        self.watchers: dict[int, Watcher] = {}
        self.breakpoints: dict[int, Any] = {}  # address -> gdb.Breakpoint
        self.entries: dict[int, list[Site]] = {}
        self.completions: dict[int, list[Site]] = {}
        self.pending: _Pending | None = None
        self.rep_active: set[int] = set()  # reentered rep sites between first iteration and after
        self.unfinished: int | None = None  # the entry of an out just recorded, until the next hit
        self.seq = 0
        self.next_ident = 1
        self.last_stop: list[dict[str, Any]] = []
        self.where_cache: dict[int, dict[str, Any]] = {}
        self.hits = 0
        self.errors: list[str] = []  # failures inside stop(): the record is incomplete

    # --- the kernel's port-I/O instructions ---------------------------------------------
    def scan(self) -> list[Site]:
        if self.sites is not None:
            return self.sites
        path = gdb.current_progspace().filename
        if not path:
            raise gdb.GdbError("piix3-ports: no kernel loaded (file kernel.elf)")
        arch = gdb.selected_inferior().architecture()
        instructions: list[tuple[int, int, str]] = []
        with _code_from_file():
            for _name, addr, size, starts in exec_sections(path):
                bounds = sorted({addr, *starts, addr + size})
                for lo, hi in zip(bounds, bounds[1:], strict=False):
                    for insn in arch.disassemble(lo, hi - 1):
                        if insn["addr"] + insn["length"] <= hi:  # not cut off by the next symbol
                            instructions.append((insn["addr"], insn["length"], insn["asm"]))
        self.sites = find_sites(instructions)
        return self.sites

    # --- watchers and the breakpoints they need -----------------------------------------
    def add(self, spec: dict[str, Any]) -> Watcher:
        w = Watcher(
            ident=self.next_ident,
            ranges=[(int(lo), int(hi)) for lo, hi in spec["ranges"]],
            direction=spec.get("direction"),
            value=spec.get("value"),
            stop=bool(spec.get("stop", False)),
            capture=int(spec.get("capture", DATA_CAPTURE_LIMIT)),
        )
        self.next_ident += 1
        self.watchers[w.ident] = w
        self.sync()
        return w

    def remove(self, ident: int) -> Watcher | None:
        w = self.watchers.pop(ident, None)
        self.sync()
        return w

    def plan(self) -> tuple[dict[int, list[Site]], dict[int, list[Site]]]:
        """Where the active watchers need breakpoints: sites by entry address, and sites
        completed at an address (the instruction after each; see the module's docstring)."""
        entries: dict[int, list[Site]] = {}
        completions: dict[int, list[Site]] = {}
        if self.watchers:
            for site in self.scan():
                if site.port is not None and not any(w.wants_port(site.port) for w in self.watchers.values()):
                    continue
                entries.setdefault(site.entry, []).append(site)
                completions.setdefault(site.after, []).append(site)
        return entries, completions

    def sync(self) -> None:
        """Breakpoints exactly where the active watchers need them; none when there are none."""
        entries, completions = self.plan()
        wanted = set(entries) | set(completions)
        for addr in list(self.breakpoints):
            if addr not in wanted:
                bp = self.breakpoints.pop(addr)
                if bp.is_valid():
                    bp.delete()
        missing = sorted(wanted - set(self.breakpoints))
        if missing:
            with _code_from_file():  # GDB reads the instruction at each new breakpoint
                for addr in missing:
                    self.breakpoints[addr] = _SiteBreakpoint(self, addr)
        self.entries, self.completions = entries, completions
        if not self.watchers:
            self.forget()

    def forget(self) -> None:
        """Drop the accesses in flight: the guest was reset or rolled back under the watchers."""
        self.pending = None
        self.unfinished = None
        self.rep_active.clear()

    # --- a breakpoint hit ------------------------------------------------------------------
    def hit(self, addr: int) -> bool:
        """Called from stop(): record what happens at addr; True to stop the guest."""
        self.hits += 1
        frame = gdb.newest_frame()
        regs: dict[str, int] = {}

        def reg(name: str) -> int:
            if name not in regs:
                regs[name] = int(frame.read_register(name)) & 0xFFFFFFFF
            return regs[name]

        stop = False
        triggered: list[dict[str, Any]] = []
        lost_step = self.unfinished == addr  # hit again with nothing run: see the docstring
        self.unfinished = None
        for site in self.completions.get(addr, ()):
            self.rep_active.discard(site.addr)  # a reentered rep has run its last iteration
        p = self.pending
        if p is not None and not (p.site.reentered and addr == p.site.addr):  # else: next iteration
            self.pending = None
            if p.site.after == addr:
                ev = self._event(p.site, p.port, p.where)
                if p.site.string:
                    ev["count"], ev["buffer"] = p.count, p.buffer
                    ev["data"] = self._data(p.port, p.buffer, p.count, p.site.width, p.backwards)
                else:
                    ev["value"] = reg("eax") & ((1 << (8 * p.site.width)) - 1)
                stop |= self._emit(ev, triggered)
        for site in self.entries.get(addr, ()):
            if site.reentered and site.addr in self.rep_active:
                continue  # a later iteration of a rep already recorded at its first
            if lost_step and site.direction == "out" and not site.reentered:
                continue  # recorded at the previous hit; the out has not run yet
            port = site.port if site.port is not None else reg("edx") & 0xFFFF
            if not any(w.wants_port(port) for w in self.watchers.values()):
                continue
            if site.reentered:
                self.rep_active.add(site.addr)
            count = (reg("ecx") if site.rep else 1) if site.string else 1
            backwards = site.string and not site.df_known and bool(reg("eflags") & EFLAGS_DF)
            where = self._where(addr)
            if site.direction == "in":
                buffer = reg("edi") if site.string else None
                self.pending = _Pending(site, port, count, buffer, backwards, where)
                continue
            if not site.reentered:
                self.unfinished = addr  # until any other breakpoint, its next instruction's first
            ev = self._event(site, port, where)
            if site.string:
                ev["count"], ev["buffer"] = count, reg("esi")
                ev["data"] = self._data(port, reg("esi"), count, site.width, backwards)
            else:
                ev["value"] = reg("eax") & ((1 << (8 * site.width)) - 1)
            stop |= self._emit(ev, triggered)
        if stop:
            self.last_stop = triggered
        return stop

    def _event(self, site: Site, port: int, where: dict[str, Any]) -> dict[str, Any]:
        return {
            "direction": site.direction,
            "port": port,
            "width": site.width,
            "value": None,
            "count": 1,
            "buffer": None,
            "data": None,
            "pc": site.addr,
            "where": where,
        }

    def _data(self, port: int, buffer: int | None, count: int, width: int, backwards: bool) -> str | None:
        """The bytes a string transfer moved (hex, in memory order), as far as the watchers'
        budgets go. With the direction flag set the buffer grows down from `buffer`."""
        nbytes = count * width
        wanting = [w for w in self.watchers.values() if w.wants_port(port)]
        limit = min(nbytes, max((w.capture for w in wanting), default=0))
        if buffer is None or nbytes <= 0 or limit <= 0:
            return "" if nbytes == 0 else None
        for w in wanting:
            w.capture = max(0, w.capture - limit)
        start = buffer - (count - 1) * width if backwards else buffer
        return bytes(gdb.selected_inferior().read_memory(start, limit)).hex()

    def _emit(self, ev: dict[str, Any], triggered: list[dict[str, Any]]) -> bool:
        self.seq += 1
        ev["seq"] = self.seq
        stop = False
        for w in self.watchers.values():
            if w.matches(ev):
                w.events.append(ev)
                if w.stop:
                    w.hits += 1
                    stop = True
                    triggered.append({**ev, "watcher": w.ident})
        return stop

    def _where(self, pc: int) -> dict[str, Any]:
        """The code making the access at pc (the current frame): the innermost frame not
        inlined from a header (x86.h's port helpers), as function, file and line. Cached."""
        if pc in self.where_cache:
            return self.where_cache[pc]
        where: dict[str, Any] = {"function": "??", "file": "", "line": None}
        try:
            frame = gdb.newest_frame()
            while frame is not None:
                sal = frame.find_sal()
                filename = sal.symtab.filename if sal.symtab else ""
                if frame.type() == gdb.INLINE_FRAME and filename.endswith(".h"):
                    frame = frame.older()
                    continue
                where = {
                    "function": frame.name() or "??",
                    "file": filename.rsplit("/", 1)[-1],
                    "line": sal.line or None,
                }
                break
        except gdb.error:
            pass
        self.where_cache[pc] = where
        return where

    # --- answers for the host ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "watchers": sorted(self.watchers),
            "breakpoints": len(self.breakpoints),
            "live_breakpoints": sum(1 for bp in self.breakpoints.values() if bp.is_valid()),
            "sites": len(self.sites) if self.sites is not None else None,
            "total_hits": self.hits,
            "errors": self.errors[-5:],
            "error_count": len(self.errors),
        }


if IN_GDB:

    class _SiteBreakpoint(gdb.Breakpoint):  # type: ignore[misc]
        """An internal breakpoint whose stop() hands the hit to the agent."""

        def __init__(self, agent: Agent, addr: int) -> None:
            super().__init__(f"*{addr:#x}", gdb.BP_BREAKPOINT, internal=True)
            self.silent = True
            self._agent = agent
            self._addr = addr

        def stop(self) -> bool:
            try:
                return self._agent.hit(self._addr)
            except Exception as exc:  # never let a recording bug stop or kill the guest
                self._agent.errors.append(f"at {self._addr:#x}: {type(exc).__name__}: {exc}")
                gdb.write(f"piix3-ports: error at {self._addr:#x}: {exc}\n", gdb.STDERR)
                return False


def _reply(obj: Any) -> None:
    gdb.write(REPLY_PREFIX + json.dumps(obj, separators=(",", ":")) + "\n")


def _parse(arg: str) -> tuple[str, dict[str, Any]]:
    parts = arg.split(None, 1)
    if not parts:
        raise ValueError("usage: piix3-ports ACTION [HEXJSON]")
    args = json.loads(bytes.fromhex(parts[1].strip())) if len(parts) > 1 else {}
    return parts[0], args


def handle(agent: Agent, action: str, args: dict[str, Any]) -> Any:
    """One request from the host; the reply object."""
    if action == "scan":
        return {"sites": [s.to_json() for s in agent.scan()]}
    if action == "watch":
        w = agent.add(args)
        return {"id": w.ident, **agent.status()}
    if action == "unwatch":
        gone = agent.remove(int(args["id"]))
        return {"events": gone.events if gone else [], "hits": gone.hits if gone else 0, **agent.status()}
    if action == "events":
        live = agent.watchers.get(int(args["id"]))
        if live is None:
            raise ValueError(f"no watcher {args['id']}")
        events = list(live.events)
        if args.get("clear"):
            live.events.clear()
        return {"events": events, "hits": live.hits}
    if action == "last-stop":
        stop, agent.last_stop = agent.last_stop, []
        return {"accesses": stop, "pc": int(gdb.newest_frame().pc()) if IN_GDB else None}
    if action == "status":
        return agent.status()
    if action == "forget":
        agent.forget()
        return agent.status()
    if action == "clear":
        for ident in list(agent.watchers):
            agent.remove(ident)
        return agent.status()
    raise ValueError(f"unknown action {action!r}")


if IN_GDB:

    class _PortsCommand(gdb.Command):  # type: ignore[misc]
        """piix3-ports ACTION [HEXJSON]: the harness's channel to the port-watching agent."""

        def __init__(self, agent: Agent) -> None:
            super().__init__(COMMAND, gdb.COMMAND_USER)
            self.agent = agent

        def invoke(self, arg: str, from_tty: bool) -> None:
            try:
                action, args = _parse(arg)
                _reply(handle(self.agent, action, args))
            except (ValueError, KeyError, TypeError) as exc:
                raise gdb.GdbError(f"piix3-ports: {exc}") from None

    # Sourcing twice keeps the first agent (and its breakpoints) rather than orphaning them.
    if "PIIX3_PORTS_AGENT" not in globals():
        PIIX3_PORTS_AGENT = Agent()
        _PortsCommand(PIIX3_PORTS_AGENT)
