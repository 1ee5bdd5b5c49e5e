"""Generated datasets on disk: the deterministic shard plan and the crash-safe shard writer."""
