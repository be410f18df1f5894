"""Real-data benchmarks: labelled video collections built from real, locally installed data.

* :mod:`vhindex.benchdata.sources` -- fetches the Debian packages the benchmarks read.
* :mod:`vhindex.benchdata.fashion` -- web-video-like clips (several shots, moving and zooming items
  over textured backgrounds, distractor shots) built from Fashion-MNIST photos, with
  ActivityNet-style ``train`` / ``query`` / ``database`` splits and label listings.
* :mod:`vhindex.benchdata.neardup` -- near-duplicate families from real videos shipped in packages.
* :mod:`vhindex.benchdata.quality` -- the runner scoring every method on both benchmarks.

Submodules are imported explicitly (they pull in PyAV only when videos are written).
"""
