"""The `phoenix` command (`main`) and the read-only views it prints (status, jobs, report)."""
