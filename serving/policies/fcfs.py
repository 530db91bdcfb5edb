"""First come, first served: the earliest waiting request, whoever sent it."""

from __future__ import annotations

from serving.policies.base import ClientHeap, Policy


class FCFSPolicy(Policy):
    name = "fcfs"

    def __init__(self, behaviour=None):
        super().__init__(behaviour)
        self.heap = ClientHeap()  # keyed by the arrival time of each client's head request

    def next_client(self):
        return self.heap.peek()

    def on_backlogged(self, client):
        self.heap.set(client, self.queues[client][0].arrival)

    def pop(self, now):
        req = super().pop(now)
        q = self.queues[req.client]
        if q:
            self.heap.set(req.client, q[0].arrival)
        return req

    def requeue_front(self, req, running, now):
        super().requeue_front(req, running, now)
        self.heap.set(req.client, self.queues[req.client][0].arrival)

    def on_drained(self, client):
        self.heap.discard(client)
