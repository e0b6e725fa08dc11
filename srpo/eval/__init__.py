"""``srpo eval``: evaluate a model or checkpoint without training, as RL papers report.

One job per module: ``estimators`` (pass@k, maj@k, avg@n and its error), ``setup`` (the
command line to the same datasets, policy, sampler and verifiers as training), ``runner``
(generate, score, record; metrics from the records), ``samples`` (the resumable per-sample
JSONL), ``report`` (table and JSON) and ``command`` (the subcommand's arguments).
"""
