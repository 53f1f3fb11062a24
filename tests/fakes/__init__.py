"""Stand-ins for the Ascend CANN toolchain, which cannot exist on these machines.

They enforce the documented contracts (see README, "Ascend interfaces") so the real code paths
in ascend_lab/atc.py and ascend_lab/runtimes/acl/runtime.py are exercised: never shipped in the package.
"""
