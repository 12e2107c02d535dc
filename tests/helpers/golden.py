"""Meta's infilling prompt for one example, from Meta's own tokenizer (quoted in llama.cpp issue #3503): the ids
every path that builds an infilling prompt must reproduce."""

GOLDEN_PREFIX = 'def remove_non_ascii(s: str) -> str:\n    """ '
GOLDEN_SUFFIX = "\n    return result\n"
GOLDEN_PSM = [
    int(x)
    for x in (
        "1 32007 822 3349 29918 5464 29918 294 18869 29898 29879 29901 851 29897 1599 851 29901 13 1678 9995 29871 "
        "32008 13 1678 736 1121 13 32009"
    ).split()
]
