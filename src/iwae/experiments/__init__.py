"""The paper's experiments (Section 5, Appendices C-E) as plans of ordinary run folders, with a report.

`iwae reproduce table1|table2|table3|posteriors|all --out DIR`; see :mod:`iwae.experiments.plan` for the runs,
:mod:`iwae.experiments.paper_results` for the paper's numbers, :mod:`iwae.experiments.report` for the report.
"""
