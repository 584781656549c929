// The receiver example from our public webhook documentation, kept verbatim except for the
// lines marked "CHANGED" / "ADDED" (secret and port from the environment, bind to loopback,
// and one RESULT line per request on stdout so a test can see what the receiver decided).
const crypto = require('crypto');
const express = require('express');
const app = express();
 
// ADDED: registered first; prints one "RESULT {...}" line per finished request.
app.use((req, res, next) => {
  res.on('finish', () => {
    console.log('RESULT ' + JSON.stringify({
      delivery: req.headers['x-webhook-delivery'] ?? null,
      event: req.headers['x-webhook-event'] ?? null,
      status: res.statusCode,
      user_agent: req.headers['user-agent'] ?? null,
      content_type: req.headers['content-type'] ?? null,
    }));
  });
  next();
});

app.use(express.json());
 
// Your webhook secret from the dashboard
const WEBHOOK_SECRET = process.env.WEBHOOK_SECRET; // CHANGED: was 'your_webhook_secret_here'
 
function verifySignature(payload, signature) {
  const expectedSignature = crypto
    .createHmac('sha256', WEBHOOK_SECRET)
    .update(payload)
    .digest('hex');
  
  return crypto.timingSafeEqual(
    Buffer.from(signature, 'hex'),
    Buffer.from(expectedSignature, 'hex')
  );
}
 
app.post('/webhook', (req, res) => {
  const signature = req.headers['x-webhook-signature'];
  const payload = JSON.stringify(req.body);
  
  if (!verifySignature(payload, signature)) {
    return res.status(401).send('Invalid signature');
  }
  
  const { event } = req.body;
  
  switch (event.type) {
    case 'post.created':
      console.log('New post created:', event.data.title);
      break;
    // ... handle other events
    default:
      console.log('Unhandled event:', event.type);
  }
  
  res.status(200).send('OK');
});
 
// CHANGED: port from $PORT (0 picks a free one), loopback only, and the real port is printed.
const server = app.listen(Number(process.env.PORT), '127.0.0.1', () => {
  console.log(`Webhook server running on port ${server.address().port}`);
});
