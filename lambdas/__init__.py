"""The inference edge cache's runtime: the code that runs in Lambda (the edge function
and the origin adapter) and the contract it shares with the infrastructure.
docs/layout.md says what each module owns and which way imports go."""
