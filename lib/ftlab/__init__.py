"""ftlab: the thin helper package under the Fine-Tuning Lab notebooks.

Importing it has no side effects; import the module you need (``from ftlab import runs``).
"""

__version__ = "0.1.0"
