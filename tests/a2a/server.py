"""A small, deterministic A2A agent for testing the coordinator's A2A client.

Built only from the official A2A Python SDK's server classes (a2a-sdk 1.3.0,
tests/a2a/requirements.txt): an AgentExecutor publishing events through the
SDK's event queue, DefaultRequestHandler with InMemoryTaskStore, and the SDK's
Starlette routes for the agent card and the JSON-RPC endpoint. The SDK serves
A2A 1.0 (SendMessage, ...; header `A2A-Version: 1.0`) and, on the same endpoint,
A2A 0.3 (message/send, ...; no version header or `A2A-Version: 0.3`).

    python tests/a2a/server.py --port P [options]

prints `ready http://127.0.0.1:P` on stdout once it accepts connections
(with --port 0 the system picks the port, and the line tells it).

What the agent does is chosen by keywords in the user message's text:
    (none)            working "Looking into it.", the answer `A2A[<n>]: <text>`
                      as artifact "answer" in two chunks, completed; n counts
                      the user messages received so far in that context
    [a2a:file]        also a file artifact with inline bytes and one with a URL
    [a2a:data]        also a data artifact {"temperature": 5, "unit": "C"}
    [a2a:ask]         ends input-required with "Which city?"; the next message
                      on that task completes it with `Forecast for <text>: sunny`
    [a2a:auth]        ends auth-required with "Please sign in."
    [a2a:fail]        working, then failed with "The agent failed on purpose."
    [a2a:reject]      rejected with "Not my job."
    [a2a:slow=N]      sleeps N milliseconds before each event

Options:
    --no-streaming            the card says capabilities.streaming=false; the SDK
                              then refuses SendStreamingMessage and message/stream
    --protocol 1.0|0.3|both   the interfaces on the card (default both)
    --rpc-path /a2a/jsonrpc   the JSON-RPC endpoint's path (default /)
    --auth-header NAME=VALUE  an apiKey security scheme on the card; JSON-RPC
                              calls without exactly that header get HTTP 401
    --record FILE             one JSON line per HTTP request received
    --skill-examples          three skills with examples instead of one

A test fixture, not product code.
"""

import argparse
import asyncio
import json
import os
import re
import socket
import sys

# The tests' venv has opentelemetry-api (through aidial-sdk), which switches on
# the SDK's tracing: with no tracer configured it only logs errors about
# detaching contexts when a stream ends. Off, before the SDK is imported
# (the imports below come after it on purpose).
os.environ.setdefault('OTEL_INSTRUMENTATION_A2A_SDK_ENABLED', 'false')

import uvicorn
from starlette.applications import Starlette

from a2a.helpers import (
    new_data_part,
    new_raw_part,
    new_task_from_user_message,
    new_text_part,
    new_url_part,
)
from a2a.server.agent_execution import (
    AgentExecutor,
    RequestContext,
    SimpleRequestContextBuilder,
)
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    APIKeySecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    TaskState,
)
from a2a.utils.constants import (
    AGENT_CARD_WELL_KNOWN_PATH,
    PROTOCOL_VERSION_0_3,
    PROTOCOL_VERSION_1_0,
    TransportProtocol,
)

DESCRIPTION = 'Answers weather questions for any city.'


# --- The agent ---------------------------------------------------------------


class WeatherExecutor(AgentExecutor):
    """Publishes a fixed sequence of task events chosen by keywords."""

    def __init__(self) -> None:
        # contextId -> number of user messages received in that context.
        self.messages_in_context: dict[str, int] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        slow = re.search(r'\[a2a:slow=(\d+)\]', text)
        delay = int(slow.group(1)) / 1000 if slow else 0.0

        async def pause() -> None:
            if delay:
                await asyncio.sleep(delay)

        n = self.messages_in_context.get(context.context_id, 0) + 1
        self.messages_in_context[context.context_id] = n

        updater = TaskUpdater(event_queue, context.task_id, context.context_id)

        def agent_says(words: str):
            return updater.new_agent_message([new_text_part(words)])

        task = context.current_task
        if task is None:
            # A new task: the SDK wants the Task itself as the first event.
            await pause()
            await event_queue.enqueue_event(new_task_from_user_message(context.message))
        elif task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED:
            # The answer to "Which city?" (a message carrying this taskId).
            await pause()
            await updater.start_work(agent_says('Looking into it.'))
            await self.answer(updater, f'Forecast for {text}: sunny', pause)
            await pause()
            await updater.complete()
            return

        if '[a2a:reject]' in text:
            await pause()
            await updater.reject(agent_says('Not my job.'))
            return

        await pause()
        await updater.start_work(agent_says('Looking into it.'))

        if '[a2a:fail]' in text:
            await pause()
            await updater.failed(agent_says('The agent failed on purpose.'))
            return
        if '[a2a:ask]' in text:
            await pause()
            await updater.requires_input(agent_says('Which city?'))
            return
        if '[a2a:auth]' in text:
            await pause()
            await updater.requires_auth(agent_says('Please sign in.'))
            return

        await self.answer(updater, f'A2A[{n}]: {text}', pause)
        if '[a2a:file]' in text:
            await pause()
            await updater.add_artifact(
                [new_raw_part(b'hello', media_type='text/plain', filename='hello.txt')],
                name='hello.txt',
                last_chunk=True,
            )
            await pause()
            await updater.add_artifact(
                [
                    new_url_part(
                        'https://example.com/report.pdf',
                        media_type='application/pdf',
                        filename='report.pdf',
                    )
                ],
                name='report.pdf',
                last_chunk=True,
            )
        if '[a2a:data]' in text:
            await pause()
            await updater.add_artifact(
                [new_data_part({'temperature': 5, 'unit': 'C'})],
                name='weather',
                last_chunk=True,
            )
        await pause()
        await updater.complete()

    @staticmethod
    async def answer(updater: TaskUpdater, answer: str, pause) -> None:
        """Sends `answer` as the text artifact "answer", in two chunks."""
        half = len(answer) // 2
        artifact_id = f'answer-{updater.task_id}'
        await pause()
        await updater.add_artifact(
            [new_text_part(answer[:half])], artifact_id=artifact_id, name='answer'
        )
        await pause()
        await updater.add_artifact(
            [new_text_part(answer[half:])],
            artifact_id=artifact_id,
            name='answer',
            append=True,
            last_chunk=True,
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel(updater.new_agent_message([new_text_part('Canceled.')]))


class ContextOfTask(SimpleRequestContextBuilder):
    """Gives a message that names only a taskId the contextId of that task.

    The SDK (1.3.0, DefaultRequestHandlerV2._setup_active_task) builds the
    request context without the stored task, so such a message would get a
    fresh contextId, and so would every event of the resumed task.
    """

    def __init__(self, task_store: InMemoryTaskStore) -> None:
        super().__init__()
        self.task_store = task_store

    async def build(self, context, params=None, task_id=None, context_id=None, task=None):
        if task_id and not context_id:
            stored = await self.task_store.get(task_id, context)
            if stored is not None:
                context_id = stored.context_id
        return await super().build(context, params, task_id, context_id, task)


# --- The agent card ------------------------------------------------------------


def make_card(args, base_url: str) -> AgentCard:
    rpc_url = base_url + args.rpc_path
    versions = {
        '1.0': [PROTOCOL_VERSION_1_0],
        '0.3': [PROTOCOL_VERSION_0_3],
        'both': [PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3],
    }[args.protocol]
    card = AgentCard(
        name='Weather Agent',
        description=DESCRIPTION,
        version='1.0.0',
        supported_interfaces=[
            AgentInterface(
                url=rpc_url,
                protocol_binding=TransportProtocol.JSONRPC.value,
                protocol_version=version,
            )
            for version in versions
        ],
        capabilities=AgentCapabilities(streaming=not args.no_streaming),
        default_input_modes=['text/plain'],
        default_output_modes=['text/plain', 'application/json'],
        skills=skills(args.skill_examples),
    )
    if args.auth_header:
        name, _value = args.auth_header
        card.security_schemes['apiKey'].CopyFrom(
            SecurityScheme(
                api_key_security_scheme=APIKeySecurityScheme(
                    location='header', name=name, description='API key'
                )
            )
        )
        card.security_requirements.append(
            SecurityRequirement(schemes={'apiKey': StringList()})
        )
    return card


def skills(with_examples: bool) -> list[AgentSkill]:
    if not with_examples:
        return [
            AgentSkill(
                id='weather',
                name='Weather',
                description='Tells the weather in a city.',
                tags=['weather'],
            )
        ]
    return [
        AgentSkill(
            id='forecast',
            name='Weather forecast',
            description='Forecasts the weather in a city for the next days.',
            tags=['weather', 'forecast'],
            examples=['What is the weather in Paris tomorrow?', 'Will it rain in Kyiv this weekend?'],
        ),
        AgentSkill(
            id='current',
            name='Current conditions',
            description='Tells the temperature and sky in a city right now.',
            tags=['weather', 'temperature'],
            examples=['How warm is it in Oslo?', 'Is it sunny in Madrid now?'],
        ),
        AgentSkill(
            id='alerts',
            name='Weather alerts',
            description='Lists storm, heat and frost warnings for a region.',
            tags=['weather', 'alerts'],
            examples=['Any storm warnings for Florida?'],
        ),
    ]


# --- Plain ASGI wrappers: recording requests and the API key check ---------------


def with_record(app, path: str):
    """Appends one JSON line per HTTP request: method, path, headers, body."""

    async def wrapped(scope, receive, send):
        if scope['type'] != 'http':
            return await app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message)
            if message['type'] != 'http.request' or not message.get('more_body'):
                break
        body = b''.join(m.get('body', b'') for m in chunks)
        line = {
            'method': scope['method'],
            'path': scope['path'] + ('?' + scope['query_string'].decode() if scope['query_string'] else ''),
            'headers': {k.decode('latin-1').lower(): v.decode('latin-1') for k, v in scope['headers']},
            'body': body.decode('utf-8', 'replace'),
        }
        with open(path, 'a', encoding='utf-8') as f:
            f.write(json.dumps(line) + '\n')

        async def replay():
            return chunks.pop(0) if chunks else await receive()

        return await app(scope, replay, send)

    return wrapped


def with_api_key(app, rpc_path: str, name: str, value: str):
    """Refuses JSON-RPC calls without the header `name: value` (HTTP 401)."""
    key = name.lower().encode('latin-1')

    async def wrapped(scope, receive, send):
        if scope['type'] == 'http' and scope['path'] == rpc_path:
            sent = [v for k, v in scope['headers'] if k.lower() == key]
            if sent != [value.encode('latin-1')]:
                body = json.dumps({'error': f'missing or wrong {name} header'}).encode()
                await send({
                    'type': 'http.response.start',
                    'status': 401,
                    'headers': [
                        (b'content-type', b'application/json'),
                        (b'content-length', str(len(body)).encode()),
                        (b'www-authenticate', f'ApiKey header="{name}"'.encode()),
                    ],
                })
                await send({'type': 'http.response.body', 'body': body})
                return
        return await app(scope, receive, send)

    return wrapped


# --- Putting it together -----------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description='A deterministic A2A test agent.')
    p.add_argument('--port', type=int, required=True, help='0 picks a free port')
    p.add_argument('--no-streaming', action='store_true',
                   help='the card says capabilities.streaming=false (streaming calls are refused)')
    p.add_argument('--protocol', choices=['1.0', '0.3', 'both'], default='both',
                   help='the interfaces the card advertises (default both); with 1.0 the 0.3 methods '
                        'are not served, with 0.3 the SDK still serves the 1.0 methods')
    p.add_argument('--rpc-path', default='/', help='path of the JSON-RPC endpoint (default /)')
    p.add_argument('--auth-header', metavar='NAME=VALUE',
                   help='require this header on JSON-RPC calls (HTTP 401 otherwise)')
    p.add_argument('--record', metavar='FILE', help='append one JSON line per HTTP request')
    p.add_argument('--skill-examples', action='store_true', help='several skills with examples')
    args = p.parse_args(argv)
    if not args.rpc_path.startswith('/'):
        p.error('--rpc-path must start with /')
    if args.auth_header:
        name, sep, value = args.auth_header.partition('=')
        if not sep or not name:
            p.error('--auth-header takes NAME=VALUE')
        args.auth_header = (name, value)
    return args


def make_app(args, base_url: str):
    card = make_card(args, base_url)
    task_store = InMemoryTaskStore()
    handler = DefaultRequestHandler(
        agent_executor=WeatherExecutor(),
        task_store=task_store,
        agent_card=card,
        request_context_builder=ContextOfTask(task_store),
    )
    routes = create_agent_card_routes(card, card_url=AGENT_CARD_WELL_KNOWN_PATH)
    routes += create_jsonrpc_routes(
        handler, rpc_url=args.rpc_path, enable_v0_3_compat=args.protocol != '1.0'
    )
    app = Starlette(routes=routes)
    if args.auth_header:
        app = with_api_key(app, args.rpc_path, *args.auth_header)
    if args.record:
        app = with_record(app, args.record)
    return app


async def serve(args) -> None:
    # Bind first, so that the card can name the real port (also with --port 0).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(('127.0.0.1', args.port))
    base_url = f'http://127.0.0.1:{sock.getsockname()[1]}'

    config = uvicorn.Config(make_app(args, base_url), log_level='warning', access_log=False)
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        print(f'ready {base_url}', flush=True)

    announcer = asyncio.create_task(announce())
    await server.serve(sockets=[sock])
    announcer.cancel()


if __name__ == '__main__':
    asyncio.run(serve(parse_args(sys.argv[1:])))
