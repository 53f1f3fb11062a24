"""runtime=acl: the compiled .om through pyACL (config, runtime, pyACL conventions, profiler)."""
