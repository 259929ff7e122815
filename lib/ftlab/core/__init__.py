"""The series' backbone: the registry of stages and methods (`stages`), parameter specs and vocabularies (`params`),
notebook parameter cells (`cells`), run folders, manifests and atomic writes (`paths`, `runs`).

The bottom layer: it imports nothing else of ftlab.
"""
