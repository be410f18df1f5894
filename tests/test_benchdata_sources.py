"""Fetching the benchmarks' Debian packages with apt-get download + dpkg -x (a real download of one small package)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from vhindex.benchdata.sources import fetch_debian_sources


@pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg") is None, reason="needs apt-get and dpkg")
def test_fetch_unpacks_under_a_relative_dest_and_is_idempotent(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    root = fetch_debian_sources("rel/sources", ["python3-imageio"], log=lines.append)
    assert root == str(tmp_path / "rel" / "sources" / "root")
    video = tmp_path / "rel/sources/root/usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4"
    assert video.is_file() and video.stat().st_size > 100_000
    stamp = json.loads((tmp_path / "rel/sources/fetched.json").read_text())
    assert stamp["packages"] == ["python3-imageio"]
    assert not (tmp_path / "rel/sources/debs").exists()  # the .deb files are not kept
    mtime = os.stat(video).st_mtime_ns
    again: list[str] = []
    assert fetch_debian_sources("rel/sources", ["python3-imageio"], log=again.append) == root
    assert again == [] and os.stat(video).st_mtime_ns == mtime  # nothing downloaded the second time


def test_fetch_names_an_unknown_package(tmp_path) -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get")
    with pytest.raises(RuntimeError, match="apt-get download failed"):
        fetch_debian_sources(str(tmp_path / "s"), ["no-such-package-vhindex-test"], update_lists=False)
