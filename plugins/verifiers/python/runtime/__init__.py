"""What runs next to the user's reward function: import it, call it, check what it returned.

Standard library only, and nothing imported here: a worker process loads this package on
its own (see ``..process``), without srpo or torch, so a worker starts in tens of
milliseconds plus whatever the reward file itself imports. The trainer imports the same
modules for ``isolation: none`` and for ``srpo validate``, so both paths share one contract.

Only builtins (floats, bools, strings, dicts, lists) leave these modules: verdicts cross a
process boundary as pickles, and the trainer must not need the worker's classes to read
them.
"""
