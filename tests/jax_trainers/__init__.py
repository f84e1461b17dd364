"""The JAX CLIP and MoCo v3 reference trainers. Kept apart from tests/trainers: `make test`
runs them in a pytest process of their own, so JAX's threads never share a process with the
PyTorch tests whose DataLoader workers fork."""
