"""The contract: what crosses a Temporal or process boundary, in one leaf every layer may import.

Workflow and activity payloads (`workflows`, `activities`, `state`, `rollout`), workflow ids
(`ids`), the names Temporal knows each part by (`names`), shared defaults (`defaults`), the
errors a user acts on (`errors`), and the one way to reach Temporal with Tidegate's payload
codec (`temporal_client`, `codec`). Nothing here imports a layer above `config/`.
"""
