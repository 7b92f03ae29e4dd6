"""The one thing pyproject.toml cannot say declaratively: the packages found under ``server/`` install
as ``lora_gateway.*``. Listed by hand they went stale (the wheel lacked ``feedback`` and ``tenancy``,
so ``import lora_gateway.app`` failed outside a checkout); found, every package ships."""

from setuptools import find_namespace_packages, setup

# Namespace packages too: a data directory (``api/static``) is a package to setuptools, which warns
# about every one it is not told of.
found = find_namespace_packages("server", exclude=["*__pycache__*"])
setup(packages=["lora_gateway", *(f"lora_gateway.{name}" for name in found), "lora_gateway.examples"])
