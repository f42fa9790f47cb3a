// An order processor written for Dapr's HTTP API, as in Dapr's pub/sub quickstart: express,
// GET /dapr/subscribe, POST /orders, and plain fetch to the sidecar to publish. No SDK.
import express from 'express';

const APP_PORT = process.env.APP_PORT ?? '5002';
const DAPR_HOST = process.env.DAPR_HOST ?? 'http://localhost';
const DAPR_HTTP_PORT = process.env.DAPR_HTTP_PORT ?? '3500';
const PUBSUB_NAME = 'orderpubsub';

const app = express();
app.use(express.json({ type: 'application/*+json' }));

app.get('/dapr/subscribe', (_req, res) => {
  res.json([
    { pubsubname: PUBSUB_NAME, topic: 'orders', route: 'orders' },
  ]);
});

app.post('/orders', async (req, res) => {
  const order = req.body.data;
  console.log('Subscriber received: ' + JSON.stringify(order));
  const reply = await fetch(
    `${DAPR_HOST}:${DAPR_HTTP_PORT}/v1.0/publish/${PUBSUB_NAME}/confirmations`,
    {
      method: 'POST',
      body: JSON.stringify({ orderId: order.orderId, status: 'confirmed' }),
      headers: { 'Content-Type': 'application/json' },
    },
  );
  if (reply.status !== 204) {
    console.log('Publishing the confirmation failed: ' + reply.status);
    res.sendStatus(500);
    return;
  }
  console.log('Published confirmation: ' + order.orderId);
  res.sendStatus(200);
});

app.listen(APP_PORT, () => console.log(`order processor listening on ${APP_PORT}`));
