"""Sample models shipped with the project: architectures, their offline data, committed weights."""
