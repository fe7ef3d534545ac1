"""Coverage of the guest: gcov line/branch counters read out of guest RAM (gcov.py), functional
coverage of the ATA protocol (covergroup.py, functional.py), and the observers that collect
both from every machine (observe.py); harness/pytest_plugin/coverage.py runs them in pytest and
`make coverage` renders the reports."""
