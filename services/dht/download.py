"""A blob download's state on disk, beside its target (``fleetsuit blob get``).

Nothing is destructive by surprise:

- the bytes go to ``FILE.fleetsuit-partial``; a sidecar,
  ``FILE.fleetsuit-partial.json``, names the content id and how many bytes
  of the partial file are good (written before the partial file is created,
  updated as bytes arrive);
- a partial download is resumed only when its sidecar names the same content
  id, from the sidecar's offset (the partial file is cut back to it). A
  partial download of another content id is ours and is discarded, once the
  new download has something to write; a partial file without a readable
  sidecar is not ours and is refused unless ``force``;
- the target is written only by renaming the partial file onto it, once the
  whole content has hashed to the content id. A target that exists and does
  not hold that content is refused unless ``force`` (then replaced by the
  rename, never appended to); one that does is left alone;
- nothing is created before the first byte arrives, so a content id the
  node does not know leaves no file behind.

This module does file I/O only; the caller streams the bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

from fleetsuit.cli import CliError

PARTIAL_SUFFIX = ".fleetsuit-partial"
SIDECAR_SUFFIX = ".fleetsuit-partial.json"
SIDECAR_FORMAT = 1
MAX_SIDECAR_BYTES = 4096  # read no more than this: a sidecar is a few dozen bytes
READ_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sidecar:
    """What the partial file holds: the first ``offset`` bytes of ``content_id``."""

    content_id: str
    offset: int

    def encode(self) -> bytes:
        doc = {"format": SIDECAR_FORMAT, "content_id": self.content_id, "offset": self.offset}
        return json.dumps(doc).encode() + b"\n"

    @staticmethod
    def decode(data: bytes) -> Sidecar | None:
        """The sidecar in ``data``, or None when it is not one of ours."""
        if len(data) > MAX_SIDECAR_BYTES:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
            return None
        content_id, offset = doc.get("content_id"), doc.get("offset")
        if not isinstance(content_id, str) or type(offset) is not int or offset < 0:
            return None
        return Sidecar(content_id, offset)


def sha256_of_file(path: str, limit: int | None = None) -> hashlib._Hash:
    """SHA-256 of the file's first ``limit`` bytes (all of it when None)."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            piece = f.read(READ_BYTES if left is None else min(READ_BYTES, left))
            if not piece:
                break
            h.update(piece)
            if left is not None:
                left -= len(piece)
    return h


class PartialDownload:
    """One download of ``content_id`` (raw ``digest``) to ``target``.

    ``prepare()`` checks the target and any partial download and says where
    to resume; ``write()`` appends what arrives; ``finish()`` checks the
    digest and renames onto the target. Used as a context manager, it saves
    the sidecar however the download ends, so an interrupted one resumes."""

    def __init__(self, target: str, content_id: str, digest: bytes, *, force: bool = False) -> None:
        self.target = target
        self.partial = target + PARTIAL_SUFFIX
        self.sidecar = target + SIDECAR_SUFFIX
        self.content_id = content_id
        self.digest = digest
        self.force = force
        self.offset = 0  # bytes of the content held in the partial file
        self.resumed_from = 0
        self.total: int | None = None  # the blob's size, once the server has said
        self.already_there = False  # the target already holds this content
        self.notes: list[str] = []  # what the user should hear about (stderr)
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = None
        self._discard = False  # the partial file and sidecar are to be replaced

    # ------------------------------------------------------------ before

    def prepare(self) -> int:
        """The offset to ask the server for. Creates and removes nothing."""
        if os.path.lexists(self.target):
            if not os.path.isfile(self.target):
                raise CliError(f"{self.target} exists and is not a regular file")
            if sha256_of_file(self.target).digest() == self.digest:
                self.already_there = True
                return 0
            if not self.force:
                raise CliError(
                    f"{self.target} exists and does not hold {self.content_id}; "
                    "not replacing it (use --force to replace it)"
                )
        sidecar = self._read_sidecar()
        has_partial = os.path.lexists(self.partial)
        has_sidecar = os.path.lexists(self.sidecar)
        if (has_partial or has_sidecar) and sidecar is None:
            if not self.force:
                foreign = self.partial if has_partial else self.sidecar
                raise CliError(
                    f"{foreign} exists and is not a partial download of this command; "
                    "remove it or use --force"
                )
            self._discard = True
        elif sidecar is not None and sidecar.content_id != self.content_id:
            self.notes.append(f"discarding the partial download of {sidecar.content_id}")
            self._discard = True
        elif sidecar is not None and has_partial and os.path.isfile(self.partial):
            self.offset = min(sidecar.offset, os.path.getsize(self.partial))
            if self.offset:
                self._hash = sha256_of_file(self.partial, self.offset)
                self.notes.append(f"resuming at byte {self.offset}")
        else:
            self._discard = has_partial or has_sidecar  # a stale sidecar of ours
        self.resumed_from = self.offset
        return self.offset

    def _read_sidecar(self) -> Sidecar | None:
        try:
            with open(self.sidecar, "rb") as f:
                return Sidecar.decode(f.read(MAX_SIDECAR_BYTES + 1))
        except OSError:
            return None

    # ------------------------------------------------------------ during

    def write(self, offset: int, data: bytes | memoryview, total: int) -> None:
        """Append the bytes the server sent for ``offset``."""
        if offset != self.offset:
            raise CliError(f"the server sent offset {offset}, expected {self.offset}")
        self.total = total
        f = self._open()
        try:
            f.write(data)
            f.flush()  # the sidecar never counts bytes the file may not have
        except OSError as exc:
            raise CliError(f"cannot write {self.partial}: {exc.strerror}") from None
        self._hash.update(data)
        self.offset += len(data)
        self._save_sidecar()

    def _open(self) -> BinaryIO:
        if self._file is not None:
            return self._file
        try:
            if self._discard:
                for path in (self.partial, self.sidecar):
                    if os.path.lexists(path):
                        os.unlink(path)
                self._discard = False
            self._save_sidecar()  # before the partial file: it is ours from its first byte
            f: BinaryIO
            if self.offset:
                f = open(self.partial, "r+b")  # noqa: SIM115 - closed in close()
                f.truncate(self.offset)
                f.seek(self.offset)
            else:
                f = open(self.partial, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise CliError(f"cannot write {exc.filename or self.partial}: {exc.strerror}") from None
        self._file = f
        return f

    def _save_sidecar(self) -> None:
        """Replace the sidecar in one rename: it is either the old or the new."""
        temporary = self.sidecar + ".tmp"
        try:
            with open(temporary, "wb") as f:
                f.write(Sidecar(self.content_id, self.offset).encode())
            os.replace(temporary, self.sidecar)
        except OSError as exc:
            raise CliError(f"cannot write {self.sidecar}: {exc.strerror}") from None

    # ------------------------------------------------------------ after

    def finish(self) -> int:
        """Check the whole digest and rename the partial file onto the
        target; returns the size. A mismatch discards the partial download."""
        if self.already_there:
            return os.path.getsize(self.target)
        if self.total is not None and self.offset != self.total:
            raise CliError(
                f"the server ended the download at byte {self.offset} of {self.total}; "
                "run the command again to resume"
            )
        f = self._open()  # an empty blob sends no bytes at all
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
            self._file = None
        if self._hash.digest() != self.digest:
            for path in (self.partial, self.sidecar):
                os.unlink(path)
            raise CliError(
                f"the downloaded bytes do not match {self.content_id}; "
                "the partial download was discarded, run the command again"
            )
        self._install()
        os.unlink(self.sidecar)
        return self.offset

    def _install(self) -> None:
        if self.force:
            os.replace(self.partial, self.target)
            return
        try:
            os.link(self.partial, self.target)  # fails if the target appeared meanwhile
        except FileExistsError:
            raise CliError(
                f"{self.target} appeared during the download; not replacing it "
                "(the complete download is kept; use --force to install it)"
            ) from None
        except OSError:  # a file system without hard links
            if os.path.lexists(self.target):
                raise CliError(f"{self.target} appeared during the download") from None
            os.replace(self.partial, self.target)
            return
        os.unlink(self.partial)

    def close(self) -> None:
        """Save the state of an unfinished download so that it resumes."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):  # every byte counted was flushed already
            self._file.close()
        self._file = None
        # On failure the previous sidecar stays: a resume starts further back.
        with contextlib.suppress(CliError):
            self._save_sidecar()

    def __enter__(self) -> PartialDownload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
