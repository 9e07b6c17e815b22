"""Seeded generators of malformed DICOM for the fuzz harness.

Case *n* of a run with seed *s* comes from ``random.Random(f"{s}:{family}:{n}")``
alone, so a case is reproducible by its family and number whatever the order
or the threads that send it (``python -m bench.fuzz --seed S --replay FAMILY:N``).

Data set families start from a small valid CT image in Explicit VR Little
Endian, encoded here element by element (PS3.5 7.1.2) so that any byte of it
can be broken; raw PDU families start from a valid association and C-STORE
byte stream (PS3.8 9.3) and break that.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import wire

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
            b"UV"}  # fmt: skip
"""VRs with a reserved field and a 4-byte length (PS3.5 Table 7.1-1)."""

ALL_VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
           b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
           b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV"]  # fmt: skip

UID_ROOT = "1.2.826.0.1.3680043.8.498."
"""pydicom's UID root (PS3.5 9): case UIDs are made under it."""

DATASET_FAMILIES = (
    "truncated",
    "wrong_vr_length",
    "deep_sequence",
    "uid_path",
    "charset",
    "pixel_lie",
)
PDU_FAMILIES = (
    "pdu_truncated",
    "pdu_oversized_length",
    "pdu_wrong_type",
    "pdu_interleaved_contexts",
    "pdu_abort_mid_dataset",
    "pdu_bitflip",
)
FAMILIES = DATASET_FAMILIES + PDU_FAMILIES

Element = tuple[int, bytes, bytes]
"""(tag as 0xGGGGEEEE, VR, value)"""


def element(tag: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; *length* overrides the length field."""
    n = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in LONG_VRS or vr not in ALL_VRS:
        return head + b"\0\0" + struct.pack("<L", n & 0xFFFFFFFF) + value
    return head + struct.pack("<H", n & 0xFFFF) + value


def even(raw: bytes, pad: bytes = b" ") -> bytes:
    return raw + pad if len(raw) % 2 else raw


def ui(value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return even(raw, b"\0")


def us(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


def uid(rng: random.Random) -> str:
    return UID_ROOT + str(rng.getrandbits(96))


@dataclass
class Base:
    """A valid CT image data set, as a list of elements in tag order."""

    sop_instance: str
    study: str
    series: str
    rows: int = 8
    cols: int = 8
    elements: list[Element] = field(default_factory=list)

    @classmethod
    def make(cls, rng: random.Random) -> Base:
        base = cls(uid(rng), uid(rng), uid(rng))
        pixels = bytes(rng.getrandbits(8) for _ in range(base.rows * base.cols * 2))
        base.elements = [
            (0x00080005, b"CS", even(b"ISO_IR 100")),
            (0x00080008, b"CS", even(b"ORIGINAL\\PRIMARY\\AXIAL")),
            (0x00080016, b"UI", ui(wire.CT_IMAGE)),
            (0x00080018, b"UI", ui(base.sop_instance)),
            (0x00080060, b"CS", even(b"CT")),
            (0x0008103E, b"LO", even(b"FUZZ")),
            (0x00100010, b"PN", even(b"FUZZ^CASE")),
            (0x00100020, b"LO", even(b"FUZZ")),
            (0x0020000D, b"UI", ui(base.study)),
            (0x0020000E, b"UI", ui(base.series)),
            (0x00200013, b"IS", even(str(rng.randrange(1, 999)).encode())),
            (0x00280002, b"US", us(1)),
            (0x00280004, b"CS", even(b"MONOCHROME2")),
            (0x00280010, b"US", us(base.rows)),
            (0x00280011, b"US", us(base.cols)),
            (0x00280100, b"US", us(16)),
            (0x00280101, b"US", us(12)),
            (0x00280102, b"US", us(11)),
            (0x00280103, b"US", us(0)),
            (0x7FE00010, b"OW", pixels),
        ]
        return base

    def set(self, tag: int, vr: bytes, value: bytes) -> None:
        self.elements = [e for e in self.elements if e[0] != tag]
        self.elements.append((tag, vr, value))
        self.elements.sort(key=lambda e: e[0])

    def encode(self) -> bytes:
        return b"".join(element(t, vr, v) for t, vr, v in self.elements)


@dataclass
class DatasetCase:
    """A C-STORE of *data* (bytes as they are) naming *sop_instance* in its command."""

    family: str
    number: int
    variant: str
    data: bytes
    sop_instance: bytes
    sop_class: bytes = wire.CT_IMAGE.encode()
    syntax: str = wire.EXPLICIT_LE
    calling: str = "FUZZ"


@dataclass
class PduCase:
    """Raw bytes for one fresh connection: before the association (when *associate*
    is false) or after a valid A-ASSOCIATE-RQ/AC exchange (when true)."""

    family: str
    number: int
    variant: str
    stream: bytes
    associate: bool
    sop_instance: str | None = None
    """SOP Instance UID of a C-STORE the stream carries (to find it stored or not)."""
    close: str = "shutdown"
    """after sending: ``shutdown`` (half-close, then read until the node closes) or ``reset``."""


Case = DatasetCase | PduCase


# -- data set families ---------------------------------------------------------------

Generated = tuple[str, "Base | bytes"]


def _truncated(rng: random.Random, base: Base) -> Generated:
    data = base.encode()
    cut = rng.randrange(1, len(data))
    return f"cut at {cut} of {len(data)}", data[:cut]


def _wrong_vr_length(rng: random.Random, base: Base) -> Generated:
    parts = [element(t, vr, v) for t, vr, v in base.elements]
    i = rng.randrange(len(parts))
    tag, vr, value = base.elements[i]
    how = rng.choice(["vr", "vr", "length", "length", "both", "odd", "undefined"])
    if how in ("vr", "both"):
        random_vr = bytes(rng.getrandbits(8) for _ in range(2))
        vr = rng.choice([*ALL_VRS, b"ZZ", b"\0\0", b"ob", random_vr])
    length: int | None = None
    if how in ("length", "both"):
        length = rng.choice(
            [0, 1, len(value) + rng.randrange(1, 64), len(value) * 7, 0xFFFF, 0xFFFFFFFE,
             rng.getrandbits(32), max(len(value) - 1, 0)]
        )  # fmt: skip
    elif how == "odd":
        length = len(value) | 1
    elif how == "undefined":
        length = 0xFFFFFFFF
    parts[i] = element(tag, vr, value, length=length)
    where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{where} {how} vr={vr!r} length={length}", b"".join(parts)


def _deep_sequence(rng: random.Random, base: Base) -> Generated:
    depth = rng.choice([8, 64, 256, 1000, 4000, 20000])
    terminated = rng.random() < 0.5
    item_start = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    seq_head = element(0x00081140, b"SQ", b"", length=0xFFFFFFFF)
    inner = element(0x00081150, b"UI", ui(wire.CT_IMAGE))
    opening = (seq_head + item_start) * depth
    closed = depth if terminated else rng.randrange(depth)
    sequence = opening + inner + (item_end + seq_end) * closed
    head = b"".join(element(t, vr, v) for t, vr, v in base.elements if t < 0x00081140)
    tail = b"".join(element(t, vr, v) for t, vr, v in base.elements if t > 0x00081140)
    state = "terminated" if terminated else f"{closed} of {depth} closed"
    return f"depth {depth}, {state}", head + sequence + tail


UNSAFE_UIDS = [
    "../../../../tmp/fuzz-escape",
    "..",
    ".",
    "/",
    "/tmp/fuzz-abs",
    "1.2.3/../../4",
    "1.2.3/4",
    "..\\..\\windows",
    "1.2.3\x004",
    "",
    "1." * 40 + "1",
    "~/.ssh/authorized_keys",
    "C:\\fuzz",
    "1.2.3 ",
    "$(touch fuzz-shell)",
    "1.2.*",
    "%2e%2e%2f",
    "1.2.3\n4",
    ".hidden",
    "-rf",
]
"""UIDs that would be paths, shell or nothing at all (PS3.5 9.1 allows digits and dots)."""

UID_TAGS = {
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
}


def _uid_path(rng: random.Random, base: Base) -> Generated:
    which = rng.sample(sorted(UID_TAGS), rng.randrange(1, 4))
    chosen: dict[str, str] = {}
    for kw in which:
        value = rng.choice(UNSAFE_UIDS)
        if rng.random() < 0.3:  # unique, so that stored ones do not collide
            value = f"{value}{rng.getrandbits(32)}"
        chosen[kw] = value
        base.set(UID_TAGS[kw], b"UI", ui(value))
    if "SOPInstanceUID" in chosen:
        base.sop_instance = chosen["SOPInstanceUID"]
    return ", ".join(f"{k}={v!r}" for k, v in chosen.items()), base


CHARSETS = [b"ISO_IR 999", b"ISO 2022 IR 87", b"\\\\\\", b"GB18030", b"ISO_IR 192",
            b"ISO 2022 IR 6\\ISO 2022 IR 149", b"", b"\xff\xfe", b"ISO_IR 100\\ISO_IR 100",
            b"ISO_IR 13", b"GBK", b"ISO_IR\x00192"]  # fmt: skip
BAD_TEXT = [b"\xff\xfe\xfd", b"\x1b$B\x1b(B\x1b", b"A\x00B", b"\xc3\x28", b"\xe2\x82",
            b"\x1b%G\xff", b"Caf\xe9", b"\\\\\\\\", b"=" * 65, b"\x1b$)C\x0e\xff\x0f"]  # fmt: skip


def _charset(rng: random.Random, base: Base) -> Generated:
    cs = rng.choice(CHARSETS)
    base.set(0x00080005, b"CS", even(cs))
    name = b"^".join(rng.choice(BAD_TEXT) for _ in range(rng.randrange(1, 4)))
    base.set(0x00100010, b"PN", even(name))
    if rng.random() < 0.5:
        base.set(0x0008103E, b"LO", even(rng.choice(BAD_TEXT) * rng.randrange(1, 40)))
    return f"charset={cs!r} name={name!r}", base


def _pixel_lie(rng: random.Random, base: Base) -> Generated:
    how = rng.choice(["dims", "bits", "frames", "length", "samples", "encapsulated", "vr"])
    if how == "dims":
        rows, cols = rng.choice([(65535, 65535), (0, 0), (4096, 4096), (1, 65535)])
        base.set(0x00280010, b"US", us(rows))
        base.set(0x00280011, b"US", us(cols))
        return f"rows={rows} cols={cols} with {base.rows * base.cols * 2} bytes", base
    if how == "bits":
        bits = rng.choice([0, 1, 7, 13, 32, 64, 255])
        base.set(0x00280100, b"US", us(bits))
        base.set(0x00280101, b"US", us(rng.choice([bits, 16, 40])))
        return f"bits allocated {bits}", base
    if how == "frames":
        frames = rng.choice([b"0", b"-1", b"99999999", b"1e9", b"abc"])
        base.set(0x00280008, b"IS", even(frames))
        return f"frames {frames!r}", base
    if how == "samples":
        base.set(0x00280002, b"US", us(rng.choice([0, 3, 4, 65535])))
        return "samples per pixel", base
    if how == "vr":
        pixels = base.elements[-1][2]
        base.set(0x7FE00010, rng.choice([b"UN", b"SQ", b"UI", b"US", b"OF"]), pixels)
        return "pixel data VR", base
    data = b"".join(element(t, vr, v) for t, vr, v in base.elements if t != 0x7FE00010)
    if how == "length":
        claimed = rng.choice([base.rows * base.cols * 2 * 1000, 0xFFFFFFF0, 2**31])
        body = b"\0" * rng.randrange(0, 256)
        lie = element(0x7FE00010, b"OW", body, length=claimed)
        return f"claims {claimed}, has {len(body)}", data + lie
    # encapsulated pixel data with lying fragment lengths, in Explicit VR LE
    items = struct.pack("<HHL", 0xFFFE, 0xE000, 0)
    items += struct.pack("<HHL", 0xFFFE, 0xE000, rng.choice([16, 2**30, 0xFFFFFFFF]))
    items += b"\xff\xd8"
    if rng.random() < 0.5:
        items += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    pixel = element(0x7FE00010, b"OB", items, length=0xFFFFFFFF)
    return "encapsulated, lying fragment", data + pixel


DATASET_GENERATORS: dict[str, Callable[[random.Random, Base], Generated]] = {
    "truncated": _truncated,
    "wrong_vr_length": _wrong_vr_length,
    "deep_sequence": _deep_sequence,
    "uid_path": _uid_path,
    "charset": _charset,
    "pixel_lie": _pixel_lie,
}


def dataset_case(seed: int, family: str, number: int) -> DatasetCase:
    rng = random.Random(f"{seed}:{family}:{number}")
    base = Base.make(rng)
    variant, out = DATASET_GENERATORS[family](rng, base)
    data = out.encode() if isinstance(out, Base) else out
    calling = "FUZZWARN" if family == "uid_path" and rng.random() < 0.5 else "FUZZ"
    if calling == "FUZZWARN":
        variant = f"[uid_policy warn] {variant}"
    sop = ui(base.sop_instance).rstrip(b"\0")
    return DatasetCase(family, number, variant, data, sop, calling=calling)


# -- raw PDU families ----------------------------------------------------------------

CONTEXTS = [
    (1, wire.CT_IMAGE, [wire.EXPLICIT_LE]),
    (3, wire.SECONDARY_CAPTURE, [wire.IMPLICIT_LE]),
    (5, wire.VERIFICATION, [wire.IMPLICIT_LE]),
]
"""What every raw case proposes: CT Image, Secondary Capture, Verification."""


def _store_stream(rng: random.Random, max_pdv: int = 4096) -> tuple[str, list[bytes]]:
    """A valid C-STORE of a fresh small CT image, as a list of P-DATA-TF PDUs."""
    base = Base.make(rng)
    command = wire.c_store_rq(
        wire.CT_IMAGE.encode(), base.sop_instance.encode(), rng.randrange(1, 60000)
    )
    pdus = [wire.p_data([(1, 0x03, command)])]
    chunks = wire.fragments(base.encode(), rng.randrange(16, max_pdv))
    for n, chunk in enumerate(chunks):
        pdus.append(wire.p_data([(1, 0x02 if n == len(chunks) - 1 else 0x00, chunk)]))
    return base.sop_instance, pdus


def _truncated_pdu(rng: random.Random, family: str, number: int) -> PduCase:
    rq = wire.associate_rq(CONTEXTS, calling="FUZZ")
    if rng.random() < 0.5:
        cut = rng.randrange(1, len(rq))
        return PduCase(family, number, f"A-ASSOCIATE-RQ cut at {cut}/{len(rq)}", rq[:cut], False)
    sop, pdus = _store_stream(rng)
    stream = b"".join(pdus)
    cut = rng.randrange(1, len(stream))
    return PduCase(family, number, f"C-STORE cut at {cut}/{len(stream)}", stream[:cut], True, sop)


def _oversized(rng: random.Random, family: str, number: int) -> PduCase:
    pdu_type = rng.choice([0x01, 0x04, 0x04, 0x05, 0x07])
    length = rng.choice([70000, 2**20, 2**24, 2**31, 0xFFFFFFFF])
    body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 512)))
    after = pdu_type != 0x01 and rng.random() < 0.7
    stream = struct.pack(">BxL", pdu_type, length) + body
    return PduCase(family, number, f"type {pdu_type:#04x} announcing {length}", stream, after)


def _wrong_type(rng: random.Random, family: str, number: int) -> PduCase:
    types = [0x00, 0x02, 0x03, 0x06, 0x08, 0x09, 0x10, 0x7F, 0x80, 0xFF]
    if rng.random() < 0.3:
        types += [0x04, 0x05]
    pdu_type = rng.choice(types)
    after = rng.random() < 0.5
    if after and rng.random() < 0.3:
        rq = wire.associate_rq(CONTEXTS, calling="FUZZ")
        return PduCase(family, number, "second A-ASSOCIATE-RQ", rq, True)
    body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
    where = "after" if after else "before"
    variant = f"type {pdu_type:#04x} {where} association"
    return PduCase(family, number, variant, wire.pdu(pdu_type, body), after)


INTERLEAVINGS = [
    "data on other context",
    "unknown context",
    "data before command",
    "two commands",
    "echo between fragments",
    "command on two contexts",
]


def _interleaved(rng: random.Random, family: str, number: int) -> PduCase:
    base = Base.make(rng)
    command = wire.c_store_rq(wire.CT_IMAGE.encode(), base.sop_instance.encode(), 7)
    data = base.encode()
    half = len(data) // 2
    how = rng.choice(INTERLEAVINGS)
    pdvs: list[tuple[int, int, bytes]]
    if how in ("data on other context", "unknown context"):
        ctx = 3 if how == "data on other context" else rng.choice([2, 7, 99, 255])
        pdvs = [(1, 0x03, command), (1, 0x00, data[:half]), (ctx, 0x02, data[half:])]
    elif how == "data before command":
        pdvs = [(1, 0x00, data[:half]), (1, 0x03, command), (1, 0x02, data[half:])]
    elif how == "two commands":
        other = wire.c_store_rq(wire.SECONDARY_CAPTURE.encode(), uid(rng).encode(), 8)
        pdvs = [(1, 0x01, command[:20]), (3, 0x03, other), (1, 0x03, command[20:]),
                (1, 0x02, data)]  # fmt: skip
    elif how == "echo between fragments":
        pdvs = [(1, 0x03, command), (1, 0x00, data[:half]), (5, 0x03, wire.c_echo_rq(9)),
                (1, 0x02, data[half:])]  # fmt: skip
    else:
        pdvs = [(1, 0x01, command[:30]), (3, 0x03, command[30:]), (1, 0x02, data)]
    if rng.random() < 0.5:  # one PDU holding every PDV, or one PDU each
        stream = wire.p_data(pdvs)
        how += ", one PDU"
    else:
        stream = b"".join(wire.p_data([p]) for p in pdvs)
    return PduCase(family, number, how, stream, True, base.sop_instance)


def _abort_mid(rng: random.Random, family: str, number: int) -> PduCase:
    sop, pdus = _store_stream(rng, max_pdv=64)
    keep = rng.randrange(1, max(len(pdus) - 1, 2))
    how = rng.choice(["A-ABORT", "A-ABORT", "reset", "half-close"])
    stream = b"".join(pdus[:keep])
    if how == "A-ABORT":
        stream += wire.abort()
    close = "reset" if how == "reset" else "shutdown"
    return PduCase(family, number, f"{how} after {keep}/{len(pdus)} PDUs", stream, True, sop,
                   close=close)  # fmt: skip


def _bitflip(rng: random.Random, family: str, number: int) -> PduCase:
    sop, pdus = _store_stream(rng)
    stream = bytearray(b"".join(pdus))
    flips = rng.randrange(1, 8)
    for _ in range(flips):
        stream[rng.randrange(len(stream))] ^= 1 << rng.randrange(8)
    return PduCase(family, number, f"{flips} bit flips", bytes(stream), True, sop)


PDU_GENERATORS: dict[str, Callable[[random.Random, str, int], PduCase]] = {
    "pdu_truncated": _truncated_pdu,
    "pdu_oversized_length": _oversized,
    "pdu_wrong_type": _wrong_type,
    "pdu_interleaved_contexts": _interleaved,
    "pdu_abort_mid_dataset": _abort_mid,
    "pdu_bitflip": _bitflip,
}


def pdu_case(seed: int, family: str, number: int) -> PduCase:
    rng = random.Random(f"{seed}:{family}:{number}")
    return PDU_GENERATORS[family](rng, family, number)


def make_case(seed: int, family: str, number: int) -> Case:
    """Case *number* of *family* in the run seeded *seed*."""
    if family in DATASET_GENERATORS:
        return dataset_case(seed, family, number)
    return pdu_case(seed, family, number)


def plan(cases: int, families: tuple[str, ...] = FAMILIES) -> list[tuple[str, int]]:
    """``(family, number)`` of every case of a run, the families in turn."""
    return [(families[i % len(families)], i // len(families)) for i in range(cases)]
