# Type information for botocore, which ships none: only the part of its API that
# wildboar.consumer.store uses.
