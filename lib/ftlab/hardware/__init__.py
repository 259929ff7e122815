"""The machine: which device trains and who writes (`devices`), the memory plan (`memory`), the multi-GPU planner
(`parallel`), samples of GPU power, RAM and disk (`telemetry`) and stage 00's environment checks (`env`).

May import `ftlab.core` only.
"""
