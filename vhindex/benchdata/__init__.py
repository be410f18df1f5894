"""Generators of labelled benchmark video collections rendered from real, locally installed data.

* :mod:`vhindex.benchdata.fashion` -- web-video-like clips (several shots, moving and zooming items
  over textured backgrounds, distractor shots) built from Fashion-MNIST photos, with
  ActivityNet-style ``train`` / ``query`` / ``database`` splits and label listings.

Submodules are imported explicitly (they pull in PyAV only when videos are written).
"""
