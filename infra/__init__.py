"""tflab's cloud layer: boto3 only (no CLI, console, SSH or TensorFlow code here).

`provider.Provider` is the contract; `aws.AwsProvider` implements it. Every resource carries
the lab's tag (`tags.LAB_TAG`), and everything is found again by that tag.
"""
