"""The one thing pyproject.toml cannot say declaratively: the packages found under ``server/`` install
as ``lora_gateway.*``. Listed by hand they went stale (the wheel lacked ``feedback`` and ``tenancy``,
so ``import lora_gateway.app`` failed outside a checkout); found, every package ships."""

from setuptools import find_packages, setup

setup(packages=["lora_gateway", *(f"lora_gateway.{name}" for name in find_packages("server")), "lora_gateway.examples"])
