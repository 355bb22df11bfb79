"""The work of segflow: plain, typed functions that read, plan, infer, write, measure and record.

Nothing here imports from ``flows``; flows compose these functions into Prefect runs.
"""
