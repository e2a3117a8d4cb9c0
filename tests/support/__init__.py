"""Hermetic test infrastructure shared by the test suites.

Import from the submodules (``tests.support.world`` and so on); nothing is
re-exported here, so importing one helper never drags in the others.

* ``dists``: tiny wheels and sdists written with zipfile/tarfile, fake torch
  builds, and wheels repacked from the test runner's own setuptools/wheel.
* ``index``: a PEP 503/691 simple-index server on 127.0.0.1 with a request log.
* ``hermetic``: the one recipe for every test subprocess's environment (``subprocess_env``).
* ``fakehw``: the one fake machine type (probe root, fake vendor tools, fake toolkits).
* ``lab``: the one launcher of backendpick runs, and ``Lab`` on top of the world.
* ``inprocess``: how ``lab.launch`` runs the commands that change nothing inside the test process.
* ``venvs``: template venvs and cheap clones (hard links to the template's files).
* ``world``: the fake package world (backend indexes, "pypi", "hostile").
"""
