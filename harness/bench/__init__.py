"""`piix3 bench`: start, reset, MI round trips and driver calls beside floors measured in the
same run, then driver throughput in the guest and end to end beside Linux's ata_piix.

measure.py  the sections that measure, and run()
report.py   rows, cells and the report; the tables and JSON
armed.py    what is armed (breakpoints, trace events) while transfers are timed
"""
