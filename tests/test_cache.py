"""The artifact cache: content keys, atomic writes, checksums, weights-only loading."""

from pathlib import Path

import pytest
import torch

from pqattack.cache import ArtifactCache, CacheError, spec_key


def test_key_depends_on_every_field_and_not_on_order() -> None:
    a = spec_key("features", {"x": 1, "y": [1, 2]})
    assert a == spec_key("features", {"y": [1, 2], "x": 1})
    assert a != spec_key("features", {"x": 2, "y": [1, 2]})
    assert a != spec_key("codebooks", {"x": 1, "y": [1, 2]})


def test_get_or_build_builds_once(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(5.0)}, {"note": "hi"}

    t1, m1, k1 = cache.get_or_build("checkpoint", {"a": 1}, build)
    t2, m2, k2 = cache.get_or_build("checkpoint", {"a": 1}, build)
    assert len(calls) == 1 and k1 == k2 and torch.equal(t1["w"], t2["w"]) and m2["note"] == "hi"
    assert m2["spec"] == {"a": 1}
    assert not list((tmp_path / "checkpoint").glob(".tmp-*"))


def test_a_load_only_kind_is_loaded_but_never_built(tmp_path: Path) -> None:
    from pqattack.errors import CacheMiss

    ArtifactCache(tmp_path).get_or_build("checkpoint", {"a": 1}, lambda: ({"w": torch.ones(2)}, {}))
    cache = ArtifactCache(tmp_path, load_only=("checkpoint",))
    assert torch.equal(cache.get_or_build("checkpoint", {"a": 1}, lambda: pytest.fail("built"))[0]["w"], torch.ones(2))
    with pytest.raises(CacheMiss, match=r"checkpoint \w+ is not in the cache"):
        cache.get_or_build("checkpoint", {"a": 2}, lambda: pytest.fail("built"))
    with pytest.raises(CacheMiss):  # a disabled cache builds everything, so it cannot hold a load-only kind
        ArtifactCache(tmp_path, enabled=False, load_only=("checkpoint",)).get_or_build(
            "checkpoint", {"a": 1}, lambda: pytest.fail("built"))
    assert cache.get_or_build("features", {"a": 2}, lambda: ({"z": torch.zeros(1)}, {}))[2]  # other kinds build
    assert not (tmp_path / "checkpoint" / spec_key("checkpoint", {"a": 2})).exists()


def test_corrupted_entry_is_refused(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    _, _, key = cache.get_or_build("features", {"a": 1}, lambda: ({"z": torch.ones(100)}, {}))
    f = cache.entry("features", key) / "tensors.pt"
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum"):
        cache.load("features", key)


def test_entry_without_metadata_is_a_miss(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    (tmp_path / "features" / "abc").mkdir(parents=True)
    (tmp_path / "features" / "abc" / "tensors.pt").write_bytes(b"half-written")
    assert cache.load("features", "abc") is None


def test_pickles_are_not_loaded(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    path = cache.save("features", "k", {"z": torch.ones(2)}, {})
    # replace the tensors with a pickled object and fix the checksum: weights_only loading refuses it
    import datetime
    import hashlib
    import json

    torch.save({"z": datetime.datetime(2020, 1, 1)}, path / "tensors.pt")  # any non-tensor global
    meta = json.loads((path / "meta.json").read_text())
    meta["sha256"] = hashlib.sha256((path / "tensors.pt").read_bytes()).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        cache.load("features", "k")
