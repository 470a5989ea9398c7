# Type information for boto3, which ships none: only the part of its API that
# wildboar.consumer.store (and its tests) use.
