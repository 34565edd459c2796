"""Writing downloaded results into a local file of another format, as they arrive.

The server sends results as an Arrow IPC stream, the most compact form it has; :class:`ArrowSink`
takes the stream's pieces as the download delivers them and, on a thread of its own, decodes its
record batches and writes them in the wanted format: CSV and TSV (converted on
``CSV_THREADS`` threads, in order, as pyarrow converts without the GIL), or the Arrow IPC file
layout. The download never waits long for the writing (a small queue lies between), and only a
few record batches are in memory at a time.

Converting here rather than on the server moves the text formatting, most of an export's work,
to the machine that wants the text, and sends the server's compact columns over the network
instead of the text, several times their size.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

CSV_THREADS = 2
_QUEUED_PIECES = 64


class _Pieces(io.RawIOBase):
    """A blocking file over the pieces put in a queue; None ends it."""

    def __init__(self, pieces: queue.Queue[bytes | None]) -> None:
        self._pieces = pieces
        self._buf = b""
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pos >= len(self._buf):
            if self._eof:
                return 0
            piece = self._pieces.get()
            if piece is None:
                self._eof = True
                return 0
            self._buf, self._pos = piece, 0
        n = min(len(buffer), len(self._buf) - self._pos)
        buffer[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n


class ArrowSink:
    """Takes an Arrow IPC stream's bytes (``write``) and writes its rows to ``target`` as
    ``kind`` (``csv``, ``tsv`` or ``arrow``, the IPC file layout). ``close`` waits for the file
    and puts it in place; ``abort`` drops it."""

    def __init__(self, target: Path, kind: str) -> None:
        self.target = target
        self.kind = kind
        self._partial = target.with_name(target.name + ".part")
        self._pieces: queue.Queue[bytes | None] = queue.Queue(_QUEUED_PIECES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="batchserve-export", daemon=True)
        self._thread.start()

    def write(self, piece: bytes) -> None:
        if self._error is not None:
            raise self._error
        if piece:
            self._pieces.put(bytes(piece))

    def close(self) -> None:
        self._pieces.put(None)
        self._thread.join()
        if self._error is not None:
            self._partial.unlink(missing_ok=True)
            raise self._error
        os.replace(self._partial, self.target)

    def abort(self) -> None:
        self._pieces.put(None)
        self._thread.join()
        self._partial.unlink(missing_ok=True)

    def _run(self) -> None:
        import pyarrow as pa

        try:
            source = io.BufferedReader(_Pieces(self._pieces), buffer_size=1 << 20)
            with pa.ipc.open_stream(source) as reader, pa.OSFile(str(self._partial), "wb") as out:
                if self.kind == "arrow":
                    with pa.ipc.new_file(out, reader.schema) as writer:
                        for batch in reader:
                            writer.write_batch(batch)
                else:
                    _write_text(reader, out, "\t" if self.kind == "tsv" else ",")
        except BaseException as exc:  # told to the download through write() and close()
            self._error = exc
            with contextlib.suppress(Exception):  # let a waiting writer go on to close()
                while self._pieces.get_nowait() is not None:
                    pass


def _write_text(reader: Any, out: Any, delimiter: str) -> None:
    """The stream's rows as CSV (or TSV) with a header, converted on threads, in order."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def text(table: Any, header: bool = False) -> Any:
        sink = pa.BufferOutputStream()
        options = pacsv.WriteOptions(include_header=header, delimiter=delimiter)
        pacsv.write_csv(table, sink, write_options=options)
        return sink.getvalue()

    out.write(text(reader.schema.empty_table(), header=True))
    with ThreadPoolExecutor(CSV_THREADS, thread_name_prefix="batchserve-csv") as pool:
        pending: deque[Future[Any]] = deque()
        for batch in reader:
            pending.append(pool.submit(text, pa.Table.from_batches([batch])))
            while len(pending) > CSV_THREADS:
                out.write(pending.popleft().result())
        while pending:
            out.write(pending.popleft().result())
