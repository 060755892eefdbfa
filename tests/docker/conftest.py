"""pytest-celery's Docker fixtures, for this directory only.

pytest-celery's plugin is registered under the name ``celery`` and re-exports
``celery.contrib.pytest`` before its own fixtures, so its Docker ``celery_worker`` silently
replaces celery's in-process one (celery/pytest-celery#442). The suite therefore runs with
``-p no:celery -p celery.contrib.pytest`` (pyproject addopts) and the Docker fixtures come back
here, where a conftest-level definition wins over the plugin's and reaches no other test.
"""

from pytest_celery import *  # noqa: F403
