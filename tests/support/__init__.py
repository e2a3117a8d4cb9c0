"""Hermetic test infrastructure shared by the test suites.

Import from the submodules (``tests.support.world`` and so on); nothing is
re-exported here, so importing one helper never drags in the others.

* ``dists``: tiny wheels and sdists written with zipfile/tarfile, fake torch
  builds, and wheels repacked from the test runner's own setuptools/wheel.
* ``index``: a PEP 503/691 simple-index server on 127.0.0.1 with a request log.
* ``venvs``: template venvs, cheap clones, hermetic environments for pip.
* ``world``: the fake package world (backend indexes, "pypi", "hostile").
"""
