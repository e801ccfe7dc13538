"""Package layout: swiftmesh/ (runtime, contracts, CLI) and services/<svc>/, which installs
as swiftmesh.services.<svc> (the layout of DESIGN.md). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

services = ["swiftmesh.services"] + [f"swiftmesh.services.{p}" for p in find_packages("services")]
setup(
    packages=find_packages(include=["swiftmesh", "swiftmesh.*"]) + services,
    package_dir={"swiftmesh": "swiftmesh", "swiftmesh.services": "services"},
)
