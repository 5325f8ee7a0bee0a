"""The contact policy shared by the offer slot (``src.serving``) and the outbound sender
(``src.campaigns``): who may be contacted on which channel (:mod:`.eligibility`), how often
(:mod:`.caps`), under which offer catalog and rules (:mod:`.policy`)."""
