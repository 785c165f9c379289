"""Cached, checksum-verified downloads built on pooch.

pooch streams to a temporary file beside the target, checks the hash and only then
moves it into place, so neither an interrupted download nor a checksum mismatch
leaves a file at the destination.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import pooch
import requests

from common import paths

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message says how to provide it offline."""


def fetch(
    url: str,
    dest_dir: str | Path,
    *,
    filename: str | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    what: str = "",
) -> Path:
    """Return ``dest_dir/filename``, downloading it from ``url`` only if it is not there yet.

    With ``sha256`` (or ``md5``, for sources that publish only that) a cached file must match it
    (else it is downloaded again) and so must the download. Without either any cached file is
    trusted and pooch logs the hash of a fresh download so it can be pinned. ``what`` names the
    file in error messages.
    """
    if sha256 is not None and md5 is not None:
        raise ValueError(f"pass sha256 or md5 for {url}, not both")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"sha256 for {url} must be 64 hex digits, got {sha256!r}")
    if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise ValueError(f"md5 for {url} must be 32 hex digits, got {md5!r}")
    # pooch's known_hash: a bare hex string is sha256; other algorithms carry a prefix.
    known_hash = sha256 if md5 is None else f"md5:{md5}"
    dest_dir = Path(dest_dir)
    filename = filename or Path(unquote(urlparse(url).path)).name
    if not filename:
        raise ValueError(f"cannot infer a file name from {url}; pass filename=")
    target = dest_dir / filename
    what = what or filename
    # pooch's own log line names the absolute target; this one names it as the user gave it (DATA_DIR/...)
    pooch_log = pooch.get_logger()
    level = pooch_log.level
    if not target.is_file():
        log.info("downloading %s from %s to %s", what, url, paths.display(target))
    try:
        pooch_log.setLevel(logging.WARNING)
        return Path(pooch.retrieve(url, known_hash, fname=filename, path=dest_dir, progressbar=True))
    except requests.RequestException as err:
        checksum = f" (sha256 {sha256})" if sha256 else f" (md5 {md5})" if md5 else ""
        raise DownloadError(
            f"could not download {what} from {url}: {type(err).__name__}: {err}\n"
            f"To work offline, place {filename}{checksum} in {paths.display(dest_dir)}/"
        ) from None  # the reason is in the message; the requests traceback is noise
    except ValueError as err:
        # With a well-formed hash, pooch raises ValueError only when the download did
        # not match (it has deleted it); a stale cached file that did not match goes too.
        target.unlink(missing_ok=True)
        raise ValueError(f"checksum mismatch for {paths.display(target)} from {url}: {err}") from None
    finally:
        pooch_log.setLevel(level)


def failure_reason(err: BaseException) -> str:
    """Why a download failed, in one line, from the whole of the exception's message.

    Libraries put the reason after a headline: torchvision raises "Error downloading FILE:" with one
    "Tried MIRROR, got:" line per mirror, each followed by urllib's "<urlopen error REASON>". The
    headline alone says nothing (offline MNIST once warned "... (Error downloading
    train-images-idx3-ubyte.gz:)"), so the reasons are collected, each once, with the hosts that gave it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reasons: dict[str, list[str]] = {}
    for tried, got in zip(lines, lines[1:]):
        match = re.fullmatch(r"Tried (\S+), got:", tried)
        if match:
            reason = re.sub(r"^<urlopen error (.*)>$", r"\1", got)
            reasons.setdefault(reason, []).append(urlparse(match[1]).netloc or match[1])
    if reasons:
        return "; ".join(f"{reason} (from {', '.join(hosts)})" for reason, hosts in reasons.items())
    text = " ".join(lines)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def extract_zip(zip_path: str | Path, dest_dir: str | Path, members: list[str] | None = None) -> list[Path]:
    """Extract ``members`` (default: all) of a zip into ``dest_dir``; return the extracted files."""
    dest_dir = Path(dest_dir)
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist() if members is None else members
        missing = sorted(set(names) - set(archive.namelist()))
        if missing:
            raise FileNotFoundError(f"{zip_path} has no member(s) {missing}")
        # ZipFile.extract strips absolute paths and '..', so members cannot escape dest_dir.
        extracted = [Path(archive.extract(name, dest_dir)) for name in names]
    return [p for p in extracted if p.is_file()]
