"""Reading back an offline W&B run (``run-ID.wandb``) for the tests of ``report_to = ["wandb"]``.

wandb 0.31 ships no Python reader of its transaction log, so this reads it the way ``wandb sync``
does: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then LevelDB-log blocks of 32 KiB whose
records (7-byte header: CRC, length, type FULL/FIRST/MIDDLE/LAST) hold wandb's own protobuf
``Record`` messages (``wandb.proto.wandb_internal_pb2``). A change of format fails here loudly: the
header or the CRC check, not a silent pass.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

BLOCK = 32 * 1024
HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    """Every ``Record`` of the file, in the order written."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:len(HEADER)] == HEADER, f"{path} does not start with W&B's header: {data[:7]!r}"
    out, pos, pending = [], len(HEADER), b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:                      # a block's tail too short for a header is padding
            pos += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:     # zeros: the rest of the block is unused
            pos += room
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad checksum at byte {pos}"
        pos += 7 + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
    parsed = []
    for raw in out:
        record = pb.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def history(path: Path) -> list[dict]:
    """The rows ``run.log`` wrote: ``{key: value}`` (W&B's own ``_step``, ``_runtime``, … included)."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_id(path: Path) -> str:
    """The id of the W&B run the file belongs to."""
    return next(r.run.run_id for r in records(path) if r.WhichOneof("record_type") == "run")
