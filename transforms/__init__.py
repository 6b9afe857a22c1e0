"""The engine-free core: cleaning, dedup, features, segment rules, change detection.

Nothing here imports Apache Beam or PyFlink, and time always comes in as an argument.
"""
