"""Write Portcullis policies in Python.

A policy is a module `policy.py` with a class `Policy(portcullis_policy.Policy)`;
`portcullis-policy build` turns it, with CPython for WebAssembly (componentize-py), into a
component the gateway loads. The contract, `wit/policy.wit`, travels inside this package.

The policy API (`Policy`, `allow`, `deny`, `modify`, `info`, `log_info`, ...) exists only
inside a component build, where componentize-py generates the bindings it wraps (`wit_world`);
on the build host this package is the build tool (`portcullis_policy.build`).
"""

import importlib.util as _util

__version__ = "0.1.0"

if _util.find_spec("wit_world") is not None:
    from ._guest import *  # noqa: F401,F403  (the policy API, inside a component build)
    from ._guest import __all__  # noqa: F401
else:

    def __getattr__(name: str):
        raise AttributeError(
            f"portcullis_policy.{name} exists only inside a component build: build the policy "
            "with `portcullis-policy build` (the bindings it wraps are generated then)"
        )
