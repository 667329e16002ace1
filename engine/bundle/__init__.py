"""Export a chosen configuration as a verified bundle, and verify / re-apply one."""
