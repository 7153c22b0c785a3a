"""The jobs, thin entry points: `python jobs/<name>.py` or the console script `cdtm-<name>`
(installed as the package ``cdtm_jobs``)."""
