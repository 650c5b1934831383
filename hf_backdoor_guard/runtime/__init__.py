"""What a run leaves on the machine and shares with other processes: output folders that are
claimed, locked and cleaned of our own files only, with atomic writes (``outputs``); the
fingerprints that key cached dataset maps (``caching``); what the command line prints
(``console``); and the processes of one launch, their ranks and barriers (``processes``).
"""
