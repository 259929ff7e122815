"""What a learner sees: plots (`plots`), JupyterLab widgets and the live training dashboard (`widgets`) and the
check-yourself cells' checker (`check_yourself`).

May import `ftlab.core`, `ftlab.hardware`, `ftlab.models`, `ftlab.data` and `ftlab.metrics`.
"""
